//! `compare`: direct, ringmesh, nginx and HAProxy side by side, in one run (BENCH-METHOD.md).
//!
//! Per scenario (HTTP/1.1, HTTP/2, TCP echo, and HTTPS/1.1 as `tls` and `mtls`):
//!
//! 1. **Maximum throughput.** Closed loop, each target in turn, rotated every round (round 1:
//!    A B C D, round 2: B C D A, …) so slow drift of the shared machine does not favour one.
//! 2. **Fixed rates** at 25 %, 50 % and 75 % of the *slowest* proxy's median maximum, so every
//!    target runs the same rates and none is overloaded.
//! 3. **Headroom check.** The generator must sustain 2× each fixed rate against direct (no
//!    proxy); a rate without that headroom is flagged, because the generator could be shaping
//!    the proxied latency there.
//! 4. **Latency** at each fixed rate, open loop, each target in turn, rotated per round. Runs that
//!    missed their rate or saw errors are refused (their latency is not reported) and the report
//!    says so.
//!
//! The TLS scenarios add a fifth step, **new handshakes per second**: closed loop, each request on
//! a new connection with a full TLS 1.3 handshake, then the same with resumed sessions, per
//! target, rotated per round, with the proxy's CPU per 1000 handshakes. There, direct is the built-in upstream's own HTTPS listener
//! (with client certificates required in `mtls`), so the headroom check runs with the
//! generator's TLS client; the report also checks the generator's own CPU at the headline rate
//! ([`GENERATOR_CPU_LIMIT`]).
//!
//! Around every run the harness samples the proxy's process-tree CPU time and RSS, the upstream's
//! CPU, and every core's busy time, which gives CPU per 1000 requests (the headline on small
//! machines), what saturated first (proxy, or the generator/upstream core), and how much of the
//! bench cores other processes took (noise).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use crate::crosscheck;
use crate::hist::LatencyHist;
use crate::http1;
use crate::iperf;
use crate::load::{self, LoadSpec, MIN_RATE_FRACTION, Mode, Monitor, Protocol};
use crate::report::{
    Better, Bottleneck, Check, CompareReport, HandshakeReport, IdleMemory, LatencySummary,
    MaxSummary, Meta, RateLevel, RatioRow, RunRecord, ScenarioReport, TargetStatus,
};
use crate::runtime::Io;
use crate::stats::{self, Spread};
use crate::sys::{self, CoreTimes, Machine};
use crate::targets::{self, BenchTls, Front, RunningTarget, TargetKind, TargetSettings};
use crate::tls::{ClientTls, Pki};
use crate::upstream::UpstreamAddrs;

/// A core busier than this is saturated.
pub const SATURATED: f64 = 0.90;
/// An open-loop run whose generator lag p90 exceeds this is generator-limited: one request in
/// ten left more than this late although its lane was free, so the generator could not keep
/// its schedule (a timer wake-up costs ~20 µs here; scheduler hiccups only reach the tail).
pub const LAG_LIMIT_US: f64 = 100.0;
/// Attempts to find fixed rates the generator can double against direct.
pub const HEADROOM_ATTEMPTS: usize = 3;

/// TLS scenarios: the generator's own CPU at the headline rate must stay below this share of a
/// core, so that the proxy, not the generator's TLS, is what is measured.
pub const GENERATOR_CPU_LIMIT: f64 = 0.5;

/// Other processes taking more than this share of the bench cores make a run noisy.
pub const NOISE_WARN: f64 = 0.05;

/// The scenarios `compare` can run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// HTTP/1.1 keep-alive.
    Http1,
    /// HTTP/2 (h2c), multiplexed.
    H2,
    /// TCP echo through an L4 proxy.
    Echo,
    /// iperf3 bulk throughput through an L4 proxy.
    Iperf3,
    /// HTTPS/1.1 keep-alive: the proxy terminates TLS 1.3, plaintext HTTP/1.1 to the upstream;
    /// plus new full handshakes per second (a connection per request).
    Tls,
    /// [`Scenario::Tls`] with a client certificate the proxy requires and verifies.
    Mtls,
}

impl Scenario {
    fn protocol(self) -> Option<Protocol> {
        match self {
            Scenario::Http1 | Scenario::Tls | Scenario::Mtls => Some(Protocol::Http1),
            Scenario::H2 => Some(Protocol::H2),
            Scenario::Echo => Some(Protocol::Echo),
            Scenario::Iperf3 => None,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Http1 => "HTTP/1.1 keep-alive",
            Scenario::H2 => "HTTP/2 (h2c, multiplexed) to an HTTP/1.1 upstream",
            Scenario::Echo => "TCP echo (L4)",
            Scenario::Iperf3 => "iperf3 (L4 bulk)",
            Scenario::Tls => {
                "TLS: HTTPS/1.1 keep-alive, terminated by the proxy, to an HTTP/1.1 upstream"
            }
            Scenario::Mtls => {
                "mTLS: HTTPS/1.1 keep-alive with a verified client certificate, to an HTTP/1.1 upstream"
            }
        }
    }

    /// Short name for reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Http1 => "http1",
            Scenario::H2 => "h2",
            Scenario::Echo => "echo",
            Scenario::Iperf3 => "iperf3",
            Scenario::Tls => "tls",
            Scenario::Mtls => "mtls",
        }
    }

    /// What the proxies' listener speaks.
    pub fn front(self) -> Front {
        match self {
            Scenario::Tls => Front::Tls,
            Scenario::Mtls => Front::Mtls,
            Scenario::H2 => Front::H2,
            Scenario::Echo | Scenario::Iperf3 => Front::Tcp,
            Scenario::Http1 => Front::Http1,
        }
    }

    /// Whether the scenario terminates TLS.
    pub fn is_tls(self) -> bool {
        self.front().is_tls()
    }
}

/// Everything `compare` needs.
#[derive(Debug, Clone)]
pub struct CompareSpec {
    /// Targets, in report order.
    pub targets: Vec<TargetKind>,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Rounds.
    pub rounds: usize,
    /// Measured time per latency run.
    pub duration: Duration,
    /// Measured time per maximum-throughput run.
    pub max_duration: Duration,
    /// Warm-up before each run.
    pub warmup: Duration,
    /// Connections for latency runs.
    pub connections: usize,
    /// Connections for maximum-throughput runs.
    pub max_connections: usize,
    /// Streams per HTTP/2 connection.
    pub streams: usize,
    /// Fixed rates as fractions of the slowest proxy's maximum.
    pub load_fractions: Vec<f64>,
    /// The headline fraction.
    pub headline_fraction: f64,
    /// Response/echo payload bytes.
    pub payload: usize,
    /// Request body bytes.
    pub request_body: usize,
    /// Proxy cores.
    pub proxy_cores: Vec<usize>,
    /// Generator and upstream cores.
    pub load_cores: Vec<usize>,
    /// Generator threads.
    pub generator_threads: usize,
    /// Upstream threads.
    pub upstream_threads: usize,
    /// I/O driver of the generator and the upstream (ringmesh's is in `targets_settings`).
    pub io: Io,
    /// Where the proxies are and how they run.
    pub targets_settings: TargetSettings,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Smoke mode.
    pub quick: bool,
    /// Run the h2load cross-check.
    pub crosscheck: bool,
    /// Seconds per iperf3 run.
    pub iperf_duration: Duration,
    /// Stream counts for iperf3.
    pub iperf_streams: Vec<usize>,
    /// The command line, for the report.
    pub command: String,
    /// Draw progress bars.
    pub progress: bool,
    /// Idle keep-alive connections opened to measure memory per connection.
    pub idle_connections: usize,
}

/// The built-in upstream, running as a child process pinned to the load cores.
#[derive(Debug)]
pub struct UpstreamProcess {
    child: Child,
    /// Its addresses.
    pub addrs: UpstreamAddrs,
}

impl UpstreamProcess {
    /// Starts `ringmesh-bench upstream` (this executable) and reads the addresses it bound.
    pub fn start(spec: &CompareSpec) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut cmd = sys::pinned_command(&exe, &spec.load_cores);
        cmd.args([
            "upstream",
            "--http",
            "127.0.0.1:0",
            "--h2",
            "127.0.0.1:0",
            "--echo",
            "127.0.0.1:0",
            "--print-addresses",
        ])
        .arg("--threads")
        .arg(spec.upstream_threads.to_string())
        .arg("--io")
        .arg(spec.io.name())
        .arg("--payload")
        .arg(spec.payload.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if !spec.load_cores.is_empty() {
            cmd.arg("--cores").arg(sys::core_list(&spec.load_cores));
        }
        if let Some(tls) = &spec.targets_settings.tls {
            // direct's side of the TLS scenarios.
            cmd.args(["--https", "127.0.0.1:0", "--https-mtls", "127.0.0.1:0"])
                .arg("--tls-cert")
                .arg(&tls.files.cert)
                .arg("--tls-key")
                .arg(&tls.files.key)
                .arg("--tls-client-ca")
                .arg(&tls.files.ca);
        }
        let mut child = cmd.spawn().context("cannot start the upstream")?;
        let stdout = child.stdout.take().context("upstream stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the upstream's addresses")?;
        let addrs: UpstreamAddrs = match serde_json::from_str(line.trim()) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the upstream did not start: {e} ({line:?})");
            }
        };
        Ok(Self { child, addrs })
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for UpstreamProcess {
    fn drop(&mut self) {
        sys::stop_tree(&mut self.child, Duration::from_secs(2));
    }
}

/// Runs the whole comparison.
pub fn run(spec: &CompareSpec) -> anyhow::Result<CompareReport> {
    // The TLS scenarios' certificates: generated for this run, removed when it ends.
    let mut with_tls;
    let mut _pki = None;
    let spec = if spec.scenarios.iter().any(|s| s.is_tls()) && spec.targets_settings.tls.is_none() {
        let pki =
            Pki::generate(&std::env::temp_dir()).context("generating the TLS certificates")?;
        with_tls = spec.clone();
        with_tls.targets_settings.tls = Some(BenchTls {
            files: pki.files.clone(),
            client: pki.client(false)?,
            mtls_client: pki.client(true)?,
        });
        _pki = Some(pki);
        &with_tls
    } else {
        spec
    };
    std::fs::create_dir_all(&spec.out_dir)
        .with_context(|| format!("cannot create {}", spec.out_dir.display()))?;
    std::fs::create_dir_all(&spec.targets_settings.dir)?;
    let began = Instant::now();
    let date = sys::utc_timestamp(SystemTime::now());
    let machine = Machine::detect();
    let mut warnings = Vec::new();
    if machine.loadavg_at_start > 0.5 {
        warnings.push(format!(
            "Load average was {:.2} at start: other work was running on this machine, so absolute \
             numbers are noisy (ratios within a round are steadier).",
            machine.loadavg_at_start
        ));
    }
    let available = crate::runtime::available_cores();
    for core in spec.proxy_cores.iter().chain(&spec.load_cores) {
        if !available.contains(core) {
            bail!("core {core} is not available to this process (available: {available:?})");
        }
    }
    if spec.proxy_cores.is_empty() || spec.load_cores.is_empty() {
        warnings.push("Runs are not pinned: proxy and generator share all cores.".to_owned());
    } else if spec.proxy_cores.iter().any(|c| spec.load_cores.contains(c)) {
        warnings.push("Proxy and generator cores overlap: numbers mix both.".to_owned());
    }

    // This thread samples /proc and draws progress during runs: keep it off the proxy's cores.
    // (Children are started through taskset with their own cores, so they do not inherit this.)
    if let Some(&core) = spec.load_cores.first()
        && !crate::runtime::pin_current_thread(core)
    {
        warnings.push(format!("Could not pin the harness itself to core {core}."));
    }
    let upstream = UpstreamProcess::start(spec)?;
    log(&format!(
        "upstream: http {:?}, h2 {:?}, echo {:?}, https {:?}, https-mtls {:?} (pid {}, cores {})",
        upstream.addrs.http,
        upstream.addrs.h2,
        upstream.addrs.echo,
        upstream.addrs.https,
        upstream.addrs.https_mtls,
        upstream.pid(),
        sys::core_list(&spec.load_cores)
    ));

    let mut scenarios = Vec::new();
    let mut checks = Vec::new();
    for &scenario in &spec.scenarios {
        if let Some(protocol) = scenario.protocol() {
            let (report, scenario_checks) =
                run_scenario(spec, scenario, protocol, &upstream, &mut warnings)?;
            scenarios.push(report);
            checks.extend(scenario_checks);
        }
    }

    let crosscheck = if spec.crosscheck && spec.targets.contains(&TargetKind::Direct) {
        upstream.addrs.http.map(|addr| {
            let duration = if spec.quick {
                Duration::from_secs(3)
            } else {
                Duration::from_secs(10)
            };
            crosscheck::run(addr, 2000.0, 16, duration, &spec.load_cores, spec.io)
        })
    } else {
        None
    };
    if let Some(c) = &crosscheck {
        checks.push(Check {
            name: "open-loop latency agrees with h2load --rps (direct)".to_owned(),
            passed: c.agrees,
            detail: c.note.clone(),
        });
    }
    drop(upstream);

    let iperf = if spec.scenarios.contains(&Scenario::Iperf3) {
        Some(iperf::run(spec, &mut warnings))
    } else {
        None
    };

    Ok(CompareReport {
        meta: Meta {
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            command: spec.command.clone(),
            commit: sys::git_commit(),
            date,
            elapsed_s: began.elapsed().as_secs_f64(),
            machine,
            generator_io: spec.io.resolve().name().to_owned(),
            proxy_cores: spec.proxy_cores.clone(),
            load_cores: spec.load_cores.clone(),
            workers: spec.targets_settings.workers,
            rounds: spec.rounds,
            duration_s: spec.duration.as_secs_f64(),
            max_duration_s: spec.max_duration.as_secs_f64(),
            warmup_s: spec.warmup.as_secs_f64(),
            connections: spec.connections,
            max_connections: spec.max_connections,
            streams: spec.streams,
            payload: spec.payload,
            request_body: spec.request_body,
            load_fractions: spec.load_fractions.clone(),
            headline_fraction: spec.headline_fraction,
            quick: spec.quick,
        },
        checks,
        warnings,
        scenarios,
        iperf,
        crosscheck,
    })
}

/// Prints a progress line to stderr.
pub fn log(line: &str) {
    eprintln!("[ringmesh-bench] {line}");
}

/// Targets in the order of round `round`: rotated by one each round.
pub fn rotation<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let n = items.len();
    (0..n).map(|i| items[(i + round) % n.max(1)]).collect()
}

fn run_scenario(
    spec: &CompareSpec,
    scenario: Scenario,
    protocol: Protocol,
    upstream: &UpstreamProcess,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(ScenarioReport, Vec<Check>)> {
    let name = scenario.name();
    let front = scenario.front();
    let tls_client: Option<ClientTls> = spec
        .targets_settings
        .tls
        .as_ref()
        .and_then(|t| t.client_for(front))
        .cloned();
    let shape = Shape {
        protocol,
        tls: tls_client.clone(),
        new_connection_per_request: false,
    };
    let addrs = &upstream.addrs;
    let (behind_proxy, direct) = match (protocol, front) {
        // The proxies terminate TLS and speak HTTP/1.1 upstream; direct is the upstream's own
        // HTTPS listener.
        (_, Front::Tls) => (addrs.http, addrs.https),
        (_, Front::Mtls) => (addrs.http, addrs.https_mtls),
        (Protocol::Http1, _) => (addrs.http, addrs.http),
        // Proxies speak HTTP/1.1 upstream; direct h2 talks to the upstream's h2c listener.
        (Protocol::H2, _) => (addrs.http, addrs.h2),
        (Protocol::Echo, _) => (addrs.echo, addrs.echo),
    };
    let (Some(behind_proxy), Some(direct)) = (behind_proxy, direct) else {
        bail!("the upstream has no listener for {name}");
    };
    let mut status: HashMap<TargetKind, TargetStatus> = spec
        .targets
        .iter()
        .map(|&kind| {
            (
                kind,
                TargetStatus {
                    kind,
                    skipped: None,
                    version: String::new(),
                    detail: None,
                    tls: None,
                },
            )
        })
        .collect();
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut idle: HashMap<TargetKind, Vec<f64>> = HashMap::new();
    let mut hists: HashMap<(TargetKind, usize), Vec<LatencyHist>> = HashMap::new();

    let start_target = |kind: TargetKind,
                        status: &mut HashMap<TargetKind, TargetStatus>,
                        tag: &str|
     -> Option<RunningTarget> {
        if status.get(&kind).is_some_and(|s| s.skipped.is_some()) {
            return None;
        }
        let address = if kind == TargetKind::Direct {
            direct
        } else {
            behind_proxy
        };
        match targets::start(kind, front, address, &spec.targets_settings, tag, true) {
            Ok(t) => {
                if let Some(s) = status.get_mut(&kind) {
                    s.version = t.version.clone();
                    s.detail = t.detail.clone();
                    s.tls = t.tls.clone();
                }
                Some(t)
            }
            Err(reason) => {
                log(&format!("{name}: {kind} skipped: {reason}"));
                if let Some(s) = status.get_mut(&kind) {
                    s.skipped = Some(reason);
                }
                None
            }
        }
    };

    // 1. Maximum throughput, closed loop.
    for round in 0..spec.rounds {
        for kind in rotation(&spec.targets, round) {
            let Some(mut target) = start_target(kind, &mut status, &format!("{name}-max-{round}"))
            else {
                continue;
            };
            let label = format!("{name} r{}/{} {kind} max", round + 1, spec.rounds);
            let (record, _) = measure(
                spec,
                &shape,
                &target,
                upstream,
                Mode::Closed,
                round,
                None,
                &label,
            )?;
            log(&format!(
                "{label}: {:.0} req/s, proxy CPU {}, bottleneck {}{}",
                record.load.achieved_rate,
                record
                    .proxy_util
                    .map_or("—".to_owned(), |u| format!("{:.0} %", u * 100.0)),
                record.bottleneck.label(),
                errors_note(&record)
            ));
            runs.push(record);
            target.stop();
        }
    }
    let max: Vec<MaxSummary> = spec
        .targets
        .iter()
        .filter(|k| status[*k].skipped.is_none())
        .map(|&kind| summarise_max(kind, &runs))
        .collect();
    let slowest = slowest_max(&max);
    let Some(slowest) = slowest else {
        warnings.push(format!(
            "{name}: no target completed a maximum-throughput run; fixed-rate runs skipped."
        ));
        return Ok((
            ScenarioReport {
                name: name.to_owned(),
                title: scenario.title().to_owned(),
                targets: ordered_status(spec, status),
                max,
                slowest_max: None,
                rate_scale: 1.0,
                generator_capacity: None,
                idle_memory: Vec::new(),
                rates: Vec::new(),
                ratios: Vec::new(),
                runs,
                handshakes: None,
                resumed_handshakes: None,
            },
            Vec::new(),
        ));
    };
    // 2. Fixed rates, and the generator's headroom for them: against direct it must sustain 2×
    // the highest fixed rate (which covers the lower ones). When it cannot, every fixed rate is
    // scaled down to what it verifiably can: a latency run at a rate the generator cannot
    // double would measure the generator as much as the proxy.
    let top_fraction = spec.load_fractions.iter().copied().fold(0.0f64, f64::max);
    let mut checks = Vec::new();
    let mut scale = 1.0f64;
    let mut headroom_ok = None;
    let mut capacity = None;
    let direct_ok =
        spec.targets.contains(&TargetKind::Direct) && status[&TargetKind::Direct].skipped.is_none();
    if direct_ok {
        let mut evidence = Vec::new();
        for attempt in 0..HEADROOM_ATTEMPTS {
            let top = (top_fraction * slowest * scale).max(1.0);
            let Some(mut target) = start_target(
                TargetKind::Direct,
                &mut status,
                &format!("{name}-headroom-{attempt}"),
            ) else {
                break;
            };
            let label = format!("{name} headroom 2×{top:.0}/s direct");
            let (record, _) = measure(
                spec,
                &shape,
                &target,
                upstream,
                Mode::Open { rate: 2.0 * top },
                0,
                None,
                &label,
            )?;
            target.stop();
            let achieved = record.load.achieved_rate;
            let ok = record.load.verdict.is_valid() && !record.generator_limited;
            log(&format!(
                "{label}: achieved {achieved:.0}/s, {}",
                if ok { "ok" } else { "NOT sustained" }
            ));
            evidence.push(format!(
                "2 × {top:.0}/s = {:.0}/s against direct: achieved {achieved:.0}/s, generator lag p90 {}: {}",
                2.0 * top,
                record
                    .load
                    .generator_lag
                    .map_or("—".to_owned(), |l| format!("{:.0} µs", l.p90_us)),
                if ok {
                    "sustained".to_owned()
                } else if record.generator_limited {
                    "the generator fell behind its schedule".to_owned()
                } else {
                    record.load.verdict.describe()
                }
            ));
            if ok {
                headroom_ok = Some(true);
                break;
            }
            headroom_ok = Some(false);
            let next = next_scale(scale, top, 2.0 * top, achieved, record.generator_limited);
            capacity = Some(achieved);
            scale = next;
        }
        let scaled = scale < 1.0;
        checks.push(Check {
            name: format!("{name}: generator sustains 2× every fixed rate against direct"),
            passed: headroom_ok,
            detail: format!(
                "{}{}",
                evidence.join("; "),
                if scaled {
                    format!(
                        ". Fixed rates scaled to {:.0} % of their nominal values so that they stay \
                         within half of what the generator verifiably sustains",
                        scale * 100.0
                    )
                } else {
                    String::new()
                }
            ),
        });
        if scaled {
            warnings.push(format!(
                "{name}: the generator and upstream cannot sustain 2× {:.0} % of the slowest proxy's \
                 maximum open loop on their core(s) (it is the bottleneck on this machine), so the \
                 fixed rates are {:.0} % of their nominal values: \"{:.0} % load\" means {:.0} % of \
                 the slowest proxy's maximum here.",
                top_fraction * 100.0,
                scale * 100.0,
                spec.headline_fraction * 100.0,
                spec.headline_fraction * scale * 100.0
            ));
        }
        if headroom_ok == Some(false) {
            warnings.push(format!(
                "{name}: even the scaled rates could not be verified against direct; latency runs \
                 may be shaped by the generator."
            ));
        }
    } else {
        checks.push(Check {
            name: format!("{name}: generator sustains 2× every fixed rate against direct"),
            passed: None,
            detail: "direct is not among the targets (or did not start)".to_owned(),
        });
    }
    let rates: Vec<(f64, f64)> = spec
        .load_fractions
        .iter()
        .map(|&f| (f, (f * slowest * scale).max(1.0)))
        .collect();
    log(&format!(
        "{name}: slowest proxy max {slowest:.0} req/s; fixed rates {}",
        rates
            .iter()
            .map(|(f, r)| format!("{:.0} % = {r:.0}/s", f * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // 3. Latency at fixed rates, open loop.
    for round in 0..spec.rounds {
        for kind in rotation(&spec.targets, round) {
            let Some(mut target) = start_target(kind, &mut status, &format!("{name}-lat-{round}"))
            else {
                continue;
            };
            for (i, &(fraction, rate)) in rates.iter().enumerate() {
                let label = format!(
                    "{name} r{}/{} {kind} {:.0} %",
                    round + 1,
                    spec.rounds,
                    fraction * 100.0
                );
                let (record, hist) = measure(
                    spec,
                    &shape,
                    &target,
                    upstream,
                    Mode::Open { rate },
                    round,
                    Some(fraction),
                    &label,
                )?;
                log(&format!(
                    "{label} ({rate:.0}/s): {}{}",
                    match (&record.load.verdict.is_valid(), &record.load.latency) {
                        (true, Some(p)) => format!(
                            "p50 {:.0} µs, p99 {:.0} µs, CPU {} s/1k req",
                            p.p50_us,
                            p.p99_us,
                            record
                                .cpu_per_1k
                                .map_or("—".to_owned(), |c| format!("{c:.4}"))
                        ),
                        _ => format!("REFUSED: {}", record.load.verdict.describe()),
                    },
                    errors_note(&record)
                ));
                if record.load.verdict.is_valid() {
                    hists.entry((kind, i)).or_default().push(hist);
                }
                runs.push(record);
            }
            // Idle memory is measured with plaintext clients: not for H2 or the TLS fronts.
            if let (Some(pid), true) = (target.pid(), matches!(front, Front::Http1 | Front::Tcp)) {
                match idle_connection_memory(front, target.address, pid, spec.idle_connections) {
                    Ok(kib) => {
                        log(&format!(
                            "{name} r{}/{} {kind}: {} idle connections: {kib:.1} KiB each",
                            round + 1,
                            spec.rounds,
                            spec.idle_connections
                        ));
                        idle.entry(kind).or_default().push(kib);
                    }
                    Err(e) => log(&format!(
                        "{name} {kind}: idle-connection memory not measured: {e}"
                    )),
                }
            }
            target.stop();
        }
    }
    let idle_memory: Vec<IdleMemory> = spec
        .targets
        .iter()
        .filter_map(|k| {
            idle.get(k).map(|v| IdleMemory {
                kind: *k,
                connections: spec.idle_connections,
                kib_per_connection: Spread::of(v),
            })
        })
        .collect();

    let mut levels = Vec::new();
    for (i, &(fraction, rate)) in rates.iter().enumerate() {
        let targets = spec
            .targets
            .iter()
            .filter(|k| status[*k].skipped.is_none())
            .map(|&kind| summarise_latency(kind, fraction, &runs, hists.get(&(kind, i))))
            .collect();
        levels.push(RateLevel {
            fraction,
            rate,
            of_slowest: fraction * scale,
            headroom: headroom_ok,
            targets,
        });
    }
    let mut ratios = ratio_rows(spec, &runs, &status);

    // 4. TLS: new full handshakes per second. Closed loop over `--max-connections` lanes, each
    // request on a new connection (TCP connect, full TLS 1.3 handshake, one request with
    // `Connection: close`), so the rate is handshakes per second and the proxy's CPU per 1000
    // requests is its CPU per 1000 handshakes (accept, handshake, one proxied request, close).
    // Then the same with session resumption: the client keeps the tickets (or session IDs) the
    // target gives it and resumes with them; a fresh client cache per run, so no ticket of
    // another target is offered.
    let (mut handshakes, mut resumed_handshakes) = (None, None);
    if scenario.is_tls() {
        let mut hs_runs: [Vec<RunRecord>; 2] = [Vec::new(), Vec::new()];
        for round in 0..spec.rounds {
            for kind in rotation(&spec.targets, round) {
                let Some(mut target) =
                    start_target(kind, &mut status, &format!("{name}-handshakes-{round}"))
                else {
                    continue;
                };
                for (resumed, hs_runs) in [false, true].into_iter().zip(hs_runs.iter_mut()) {
                    let hs_shape = Shape {
                        new_connection_per_request: true,
                        tls: shape
                            .tls
                            .as_ref()
                            .map(|c| if resumed { c.resuming() } else { c.clone() }),
                        ..shape.clone()
                    };
                    let label = format!(
                        "{name} r{}/{} {kind} {} handshakes",
                        round + 1,
                        spec.rounds,
                        if resumed { "resumed" } else { "full" }
                    );
                    let before = crate::tls::client_handshakes();
                    let (mut record, _) = measure(
                        spec,
                        &hs_shape,
                        &target,
                        upstream,
                        Mode::Closed,
                        round,
                        None,
                        &label,
                    )?;
                    let after = crate::tls::client_handshakes();
                    let (full, resumed_n) = (after.0 - before.0, after.1 - before.1);
                    record.resumed_share = (full + resumed_n > 0)
                        .then(|| resumed_n as f64 / (full + resumed_n) as f64);
                    log(&format!(
                        "{label}: {:.0} handshakes/s ({} resumed), proxy CPU {}, {} s/1k handshakes, bottleneck {}{}",
                        record.load.achieved_rate,
                        record
                            .resumed_share
                            .map_or("—".to_owned(), |s| format!("{:.0} %", s * 100.0)),
                        record
                            .proxy_util
                            .map_or("—".to_owned(), |u| format!("{:.0} %", u * 100.0)),
                        record
                            .cpu_per_1k
                            .map_or("—".to_owned(), |c| format!("{c:.4}")),
                        record.bottleneck.label(),
                        errors_note(&record)
                    ));
                    hs_runs.push(record);
                }
                target.stop();
            }
        }
        for (resumed, hs_runs) in [false, true].into_iter().zip(hs_runs) {
            let max: Vec<MaxSummary> = spec
                .targets
                .iter()
                .filter(|k| status[*k].skipped.is_none())
                .map(|&kind| summarise_max(kind, &hs_runs))
                .collect();
            ratios.extend(handshake_ratio_rows(spec, &hs_runs, &status, resumed));
            let report = Some(HandshakeReport {
                connections: spec.max_connections,
                resumption: resumed,
                max,
                runs: hs_runs,
            });
            if resumed {
                resumed_handshakes = report;
            } else {
                handshakes = report;
            }
        }
    }
    if scenario.is_tls() {
        // The generator must not be what is measured: its own CPU at the headline rate.
        let shares: Vec<(TargetKind, f64)> = runs
            .iter()
            .filter(|r| r.fraction == Some(spec.headline_fraction) && r.wall_s > 0.0)
            .map(|r| (r.target, r.load.generator_cpu_s / r.wall_s))
            .collect();
        let worst = shares.iter().map(|s| s.1).max_by(f64::total_cmp);
        checks.push(Check {
            name: format!(
                "{name}: the generator's own CPU at {:.0} % load stays below half a core",
                spec.headline_fraction * 100.0
            ),
            passed: worst.map(|w| w < GENERATOR_CPU_LIMIT),
            detail: if shares.is_empty() {
                "no run at the headline rate".to_owned()
            } else {
                format!(
                    "generator threads' CPU per run: {}",
                    shares
                        .iter()
                        .map(|(k, c)| format!("{k} {:.0} %", c * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        });
    }

    // Self-check: refused runs are reported as such.
    let refused: Vec<String> = runs
        .iter()
        .filter(|r| r.fraction.is_some() && !r.load.verdict.is_valid())
        .map(|r| {
            format!(
                "{} r{} {:.0} %: {}",
                r.target,
                r.round + 1,
                r.fraction.unwrap_or(0.0) * 100.0,
                r.load.verdict.describe()
            )
        })
        .collect();
    checks.push(Check {
        name: format!(
            "{name}: every fixed-rate run achieved its rate (else its latency is refused)"
        ),
        passed: Some(refused.is_empty()),
        detail: if refused.is_empty() {
            "all fixed-rate runs achieved ≥ 97 % of their target rate without errors".to_owned()
        } else {
            format!("refused: {}", refused.join("; "))
        },
    });
    let generator_bound: Vec<String> = max
        .iter()
        .filter(|m| m.kind != TargetKind::Direct && m.bottleneck == Bottleneck::Generator)
        .map(|m| m.kind.to_string())
        .collect();
    if !generator_bound.is_empty() {
        warnings.push(format!(
            "{name}: maximum throughput of {} was limited by the generator/upstream cores, not \
             the proxy: those maxima are lower bounds. Compare CPU per request at fixed rates \
             instead (BENCH-METHOD.md rule 6).",
            generator_bound.join(", ")
        ));
    }
    let noisy = runs
        .iter()
        .filter(|r| r.foreign_cpu.is_some_and(|f| f > NOISE_WARN))
        .count();
    if noisy > 0 {
        warnings.push(format!(
            "{name}: in {noisy} of {} runs, processes outside the benchmark used more than {:.0} % \
             of the bench cores (see foreign_cpu in report.json): those numbers are noisy.",
            runs.len(),
            NOISE_WARN * 100.0
        ));
    }

    Ok((
        ScenarioReport {
            name: name.to_owned(),
            title: scenario.title().to_owned(),
            targets: ordered_status(spec, status),
            max,
            slowest_max: Some(slowest),
            rate_scale: scale,
            generator_capacity: capacity,
            idle_memory,
            rates: levels,
            ratios,
            runs,
            handshakes,
            resumed_handshakes,
        },
        checks,
    ))
}

fn errors_note(r: &RunRecord) -> String {
    let e = r.load.errors.total();
    if e == 0 {
        String::new()
    } else {
        format!(", {e} errors {:?}", r.load.errors)
    }
}

fn ordered_status(
    spec: &CompareSpec,
    mut status: HashMap<TargetKind, TargetStatus>,
) -> Vec<TargetStatus> {
    spec.targets
        .iter()
        .filter_map(|k| status.remove(k))
        .collect()
}

/// What the generator speaks in a run.
#[derive(Debug, Clone)]
struct Shape {
    protocol: Protocol,
    /// HTTPS with this client.
    tls: Option<ClientTls>,
    /// A new connection (and TLS handshake) per request.
    new_connection_per_request: bool,
}

/// Samples the proxy, the upstream and the cores around the measurement window.
struct RunMonitor {
    proxy: Option<u32>,
    upstream: u32,
    at_start: Option<(Instant, Option<f64>, f64, CoreTimes)>,
    at_end: Option<(Instant, Option<f64>, f64, CoreTimes)>,
    rss_max: u64,
}

impl RunMonitor {
    fn sample(&self) -> (Instant, Option<f64>, f64, CoreTimes) {
        (
            Instant::now(),
            self.proxy.map(sys::tree_cpu_seconds),
            sys::tree_cpu_seconds(self.upstream),
            CoreTimes::now(),
        )
    }
}

impl Monitor for RunMonitor {
    fn window_start(&mut self) {
        self.at_start = Some(self.sample());
    }
    fn window_end(&mut self) {
        self.at_end = Some(self.sample());
    }
    fn tick(&mut self) {
        if let Some(pid) = self.proxy {
            self.rss_max = self.rss_max.max(sys::tree_rss_bytes(pid));
        }
    }
}

/// One load run against a running target, with CPU, memory and bottleneck.
#[allow(clippy::too_many_arguments)]
fn measure(
    spec: &CompareSpec,
    shape: &Shape,
    target: &RunningTarget,
    upstream: &UpstreamProcess,
    mode: Mode,
    round: usize,
    fraction: Option<f64>,
    label: &str,
) -> anyhow::Result<(RunRecord, LatencyHist)> {
    let closed = matches!(mode, Mode::Closed);
    let load = LoadSpec {
        protocol: shape.protocol,
        address: target.address,
        host: "bench.local".to_owned(),
        path: format!("/payload/{}", spec.payload),
        request_body: spec.request_body,
        payload: spec.payload,
        connections: if closed {
            spec.max_connections
        } else {
            spec.connections
        },
        streams: spec.streams,
        mode,
        duration: if closed {
            spec.max_duration
        } else {
            spec.duration
        },
        warmup: spec.warmup,
        threads: spec.generator_threads,
        cores: spec.load_cores.clone(),
        io: spec.io,
        timeout: Duration::from_secs(5),
        label: label.to_owned(),
        progress: spec.progress,
        align_lanes: false,
        tls: shape.tls.clone(),
        new_connection_per_request: shape.new_connection_per_request,
    };
    let mut monitor = RunMonitor {
        proxy: target.pid(),
        upstream: upstream.pid(),
        at_start: None,
        at_end: None,
        rss_max: 0,
    };
    monitor.tick();
    let run = load::run(&load, &mut monitor)?;
    let report = run.report;
    let (Some(s), Some(e)) = (&monitor.at_start, &monitor.at_end) else {
        bail!("the run ended without a measurement window");
    };
    let wall = e.0.duration_since(s.0).as_secs_f64().max(1e-6);
    let proxy_cpu = match (s.1, e.1) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    let upstream_cpu = (e.2 - s.2).max(0.0);
    let proxy_cores = &spec.proxy_cores;
    let load_cores = &spec.load_cores;
    let proxy_util = proxy_cpu.map(|c| c / wall / proxy_cores.len().max(1) as f64);
    let load_core_busy = e.3.busy_since(&s.3, load_cores);
    let proxy_core_busy = e.3.busy_since(&s.3, proxy_cores);
    let ours = proxy_cpu.unwrap_or(0.0) + upstream_cpu + report.generator_cpu_s;
    let bench_cores: Vec<usize> = proxy_cores.iter().chain(load_cores).copied().collect();
    let foreign_cpu = e.3.busy_since(&s.3, &bench_cores).map(|busy| {
        let ours_share = ours / wall / bench_cores.len().max(1) as f64;
        (busy - ours_share).max(0.0)
    });
    let load_side_util =
        (report.generator_cpu_s + upstream_cpu) / wall / load_cores.len().max(1) as f64;
    let proxy_core_busy = proxy_core_busy.filter(|_| target.pid().is_some());
    let bottleneck = classify(proxy_util, load_side_util, load_core_busy, proxy_core_busy);
    // Open loop: the generator could not keep its schedule, or it and the upstream filled their
    // cores (other processes filling them show up as foreign CPU instead).
    let generator_limited = !closed && (generator_lagging(&report) || load_side_util >= SATURATED);
    let cpu_per_1k = proxy_cpu
        .filter(|_| report.completed > 0)
        .map(|c| c / report.completed as f64 * 1000.0);
    let record = RunRecord {
        target: target.kind,
        round,
        fraction,
        load: report,
        proxy_cpu_s: proxy_cpu,
        cpu_per_1k,
        proxy_util,
        rss_mib: target
            .pid()
            .map(|_| monitor.rss_max as f64 / (1u64 << 20) as f64),
        wall_s: wall,
        upstream_cpu_s: upstream_cpu,
        load_side_util,
        load_core_busy,
        proxy_core_busy,
        foreign_cpu,
        bottleneck,
        generator_limited,
        resumed_share: None,
    };
    Ok((record, run.latency))
}

/// Opens `n` keep-alive connections through a proxy, one request (or echo) on each so that the
/// proxy has fully set it up (for L4, with its upstream connection), and returns the growth of
/// the proxy's RSS per connection, KiB (BENCH-METHOD.md rule 6).
fn idle_connection_memory(
    front: Front,
    address: std::net::SocketAddr,
    pid: u32,
    n: usize,
) -> Result<f64, String> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(2);
    let before = sys::tree_rss_bytes(pid);
    let mut conns = Vec::with_capacity(n);
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        let fail = |e: std::io::Error| format!("connection {i}: {e}");
        let mut s = std::net::TcpStream::connect_timeout(&address, timeout).map_err(fail)?;
        s.set_read_timeout(Some(timeout)).map_err(fail)?;
        s.set_nodelay(true).map_err(fail)?;
        match front {
            Front::Tcp => {
                s.write_all(&[b'i'; 16]).map_err(fail)?;
                s.read_exact(&mut buf[..16]).map_err(fail)?;
            }
            _ => {
                s.write_all(b"GET /payload/16 HTTP/1.1\r\nHost: bench.local\r\n\r\n")
                    .map_err(fail)?;
                let mut got = 0;
                loop {
                    let k = match s.read(&mut buf[got..]) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => other.map_err(fail)?,
                    };
                    if k == 0 {
                        return Err(format!("connection {i}: closed by the proxy"));
                    }
                    got += k;
                    match http1::parse_response(&buf[..got]) {
                        Ok(Some(head)) => {
                            let body = match head.framing {
                                http1::Framing::Length(len) => len as usize,
                                _ => 0,
                            };
                            if got >= head.len + body {
                                break;
                            }
                        }
                        Ok(None) if got < buf.len() => {}
                        Ok(None) => return Err(format!("connection {i}: response head too large")),
                        Err(e) => return Err(format!("connection {i}: {e}")),
                    }
                }
            }
        }
        conns.push(s);
    }
    // Let the proxy finish whatever it does after a response before sampling.
    std::thread::sleep(Duration::from_millis(200));
    let after = sys::tree_rss_bytes(pid);
    drop(conns);
    Ok((after as f64 - before as f64) / n.max(1) as f64 / 1024.0)
}

/// The next rate scale after a failed headroom run at `target` (2× the top fixed rate `top`),
/// which achieved `achieved`. A shortfall shows the generator's capacity directly; a run that
/// kept the rate but fell behind schedule was at capacity, so aim lower. The top fixed rate
/// becomes 90 % of half the capacity, and the scale always shrinks by at least 20 %.
pub fn next_scale(scale: f64, top: f64, target: f64, achieved: f64, lagging: bool) -> f64 {
    let capacity = if achieved < MIN_RATE_FRACTION * target {
        achieved
    } else if lagging {
        0.8 * achieved
    } else {
        // Failed for errors: nothing to learn about capacity; back off.
        achieved
    };
    let wanted_top = 0.9 * capacity / 2.0;
    let proposed = scale * wanted_top / top.max(1e-9);
    proposed.min(scale * 0.8).max(0.01)
}

/// What limited a run, from the proxy's CPU use (share of its cores), the generator and
/// upstream's CPU use (share of theirs), and how busy the load and proxy cores were with
/// everything on them included.
pub fn classify(
    proxy_util: Option<f64>,
    load_side_util: f64,
    load_core_busy: Option<f64>,
    proxy_core_busy: Option<f64>,
) -> Bottleneck {
    let full = |b: Option<f64>| b.is_some_and(|b| b >= SATURATED);
    if proxy_util.is_some_and(|u| u >= SATURATED) {
        Bottleneck::Target
    } else if load_side_util >= SATURATED {
        Bottleneck::Generator
    } else if full(load_core_busy) || full(proxy_core_busy) {
        Bottleneck::Contended
    } else {
        Bottleneck::Neither
    }
}

/// The generator could not keep its schedule (see [`LAG_LIMIT_US`]).
pub fn generator_lagging(report: &load::LoadReport) -> bool {
    report
        .generator_lag
        .is_some_and(|lag| lag.p90_us > LAG_LIMIT_US)
}

fn summarise_max(kind: TargetKind, runs: &[RunRecord]) -> MaxSummary {
    let mine: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.target == kind && r.fraction.is_none() && r.load.completed > 0)
        .collect();
    let values = |f: &dyn Fn(&RunRecord) -> Option<f64>| -> Option<Spread> {
        Spread::of(&mine.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let mut counts: HashMap<Bottleneck, usize> = HashMap::new();
    for r in &mine {
        *counts.entry(r.bottleneck).or_default() += 1;
    }
    let bottleneck = [
        Bottleneck::Target,
        Bottleneck::Generator,
        Bottleneck::Neither,
    ]
    .into_iter()
    .max_by_key(|b| counts.get(b).copied().unwrap_or(0))
    .unwrap_or(Bottleneck::Neither);
    MaxSummary {
        kind,
        rps: values(&|r| Some(r.load.achieved_rate)),
        cpu_per_1k: values(&|r| r.cpu_per_1k),
        proxy_util: values(&|r| r.proxy_util),
        bottleneck,
        p99_us: values(&|r| r.load.latency.map(|l| l.p99_us)),
    }
}

/// The slowest proxied target's median maximum; direct's when no proxy ran.
pub fn slowest_max(max: &[MaxSummary]) -> Option<f64> {
    let proxied = max
        .iter()
        .filter(|m| m.kind != TargetKind::Direct)
        .filter_map(|m| m.rps.map(|s| s.median))
        .min_by(f64::total_cmp);
    proxied.or_else(|| {
        max.iter()
            .find(|m| m.kind == TargetKind::Direct)
            .and_then(|m| m.rps.map(|s| s.median))
    })
}

/// Per-round value of a metric for `kind` at `fraction` (valid runs only), indexed by round.
fn per_round(
    runs: &[RunRecord],
    kind: TargetKind,
    fraction: Option<f64>,
    f: impl Fn(&RunRecord) -> Option<f64>,
) -> Vec<Option<f64>> {
    let rounds = runs.iter().map(|r| r.round + 1).max().unwrap_or(0);
    (0..rounds)
        .map(|round| {
            runs.iter()
                .find(|r| {
                    r.target == kind
                        && r.round == round
                        && r.fraction == fraction
                        && (fraction.is_none() || r.load.verdict.is_valid())
                })
                .and_then(&f)
        })
        .collect()
}

fn summarise_latency(
    kind: TargetKind,
    fraction: f64,
    runs: &[RunRecord],
    hists: Option<&Vec<LatencyHist>>,
) -> LatencySummary {
    let mine: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.target == kind && r.fraction == Some(fraction))
        .collect();
    let valid: Vec<&RunRecord> = mine
        .iter()
        .copied()
        .filter(|r| r.load.verdict.is_valid())
        .collect();
    let over_valid = |f: &dyn Fn(&RunRecord) -> Option<f64>| -> Option<Spread> {
        Spread::of(&valid.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let pct = |name: &'static str| over_valid(&move |r| r.load.latency.and_then(|p| p.get(name)));
    let added = |name: &'static str| {
        if kind == TargetKind::Direct {
            return None;
        }
        let get = move |r: &RunRecord| r.load.latency.and_then(|p| p.get(name));
        stats::paired_difference(
            &per_round(runs, kind, Some(fraction), get),
            &per_round(runs, TargetKind::Direct, Some(fraction), get),
        )
    };
    let mut merged = LatencyHist::new();
    for h in hists.into_iter().flatten() {
        merged.merge(h);
    }
    LatencySummary {
        kind,
        runs: mine.len(),
        valid_runs: valid.len(),
        refused: mine
            .iter()
            .filter(|r| !r.load.verdict.is_valid())
            .map(|r| {
                format!(
                    "refused in round {}: {}",
                    r.round + 1,
                    r.load.verdict.describe()
                )
            })
            .collect(),
        achieved: Spread::of(
            &mine
                .iter()
                .map(|r| r.load.achieved_rate)
                .collect::<Vec<_>>(),
        ),
        p50: pct("p50"),
        p90: pct("p90"),
        p99: pct("p99"),
        p999: pct("p99.9"),
        max: pct("max"),
        added_p50: added("p50"),
        added_p99: added("p99"),
        cpu_per_1k: over_valid(&|r| r.cpu_per_1k),
        proxy_util: over_valid(&|r| r.proxy_util),
        rss_mib: over_valid(&|r| r.rss_mib),
        generator_lag_p90_us: valid
            .iter()
            .filter_map(|r| r.load.generator_lag.map(|l| l.p90_us))
            .max_by(f64::total_cmp),
        generator_limited: valid.iter().any(|r| r.generator_limited),
        curve: merged.curve(),
    }
}

/// Handshake ratios between every pair of proxies that ran, paired by round.
fn handshake_ratio_rows(
    spec: &CompareSpec,
    runs: &[RunRecord],
    status: &HashMap<TargetKind, TargetStatus>,
    resumed: bool,
) -> Vec<RatioRow> {
    let proxies: Vec<TargetKind> = spec
        .targets
        .iter()
        .copied()
        .filter(|k| *k != TargetKind::Direct)
        .collect();
    let kind = if resumed { "resumed" } else { "full" };
    let mut rows = Vec::new();
    for (i, &a) in proxies.iter().enumerate() {
        for &b in &proxies[i + 1..] {
            let both_ran = [a, b]
                .iter()
                .all(|k| status.get(k).is_some_and(|s| s.skipped.is_none()));
            let row = |metric: &str, better, f: &dyn Fn(&RunRecord) -> Option<f64>| RatioRow {
                metric: metric.to_owned(),
                a,
                b,
                better,
                ratio: if both_ran {
                    stats::paired_ratio(&per_round(runs, a, None, f), &per_round(runs, b, None, f))
                } else {
                    None
                },
            };
            rows.push(row(
                &format!("new TLS handshakes per second ({kind}, closed loop)"),
                Better::Higher,
                &|r| Some(r.load.achieved_rate),
            ));
            rows.push(row(
                &format!("CPU per 1000 new TLS handshakes ({kind})"),
                Better::Lower,
                &|r| r.cpu_per_1k,
            ));
        }
    }
    rows
}

/// Ratios between every pair of proxies that ran, ringmesh first.
fn ratio_rows(
    spec: &CompareSpec,
    runs: &[RunRecord],
    status: &HashMap<TargetKind, TargetStatus>,
) -> Vec<RatioRow> {
    let proxies: Vec<TargetKind> = spec
        .targets
        .iter()
        .copied()
        .filter(|k| *k != TargetKind::Direct)
        .collect();
    let headline = Some(spec.headline_fraction);
    let mut rows = Vec::new();
    for (i, &a) in proxies.iter().enumerate() {
        for &b in &proxies[i + 1..] {
            let both_ran = [a, b]
                .iter()
                .all(|k| status.get(k).is_some_and(|s| s.skipped.is_none()));
            let row = |metric: &str, better, va: Vec<Option<f64>>, vb: Vec<Option<f64>>| RatioRow {
                metric: metric.to_owned(),
                a,
                b,
                better,
                ratio: if both_ran {
                    stats::paired_ratio(&va, &vb)
                } else {
                    None
                },
            };
            let rps = |k| per_round(runs, k, None, |r| Some(r.load.achieved_rate));
            rows.push(row("max throughput", Better::Higher, rps(a), rps(b)));
            let added_p99 = |k| {
                let own = per_round(runs, k, headline, |r| r.load.latency.map(|p| p.p99_us));
                let direct = per_round(runs, TargetKind::Direct, headline, |r| {
                    r.load.latency.map(|p| p.p99_us)
                });
                // A round where the proxy did not add latency (noise made it faster than
                // direct) has no meaningful ratio: leave it out.
                own.iter()
                    .zip(direct.iter().chain(std::iter::repeat(&None)))
                    .map(|(o, d)| Some((*o)? - (*d)?).filter(|added| *added > 0.0))
                    .collect::<Vec<_>>()
            };
            rows.push(row(
                &format!("added p99 at {:.0} % load", spec.headline_fraction * 100.0),
                Better::Lower,
                added_p99(a),
                added_p99(b),
            ));
            let p99 = |k| per_round(runs, k, headline, |r| r.load.latency.map(|p| p.p99_us));
            rows.push(row(
                &format!("p99 at {:.0} % load", spec.headline_fraction * 100.0),
                Better::Lower,
                p99(a),
                p99(b),
            ));
            let cpu = |k| per_round(runs, k, headline, |r| r.cpu_per_1k);
            rows.push(row(
                &format!(
                    "CPU per 1000 requests at {:.0} % load",
                    spec.headline_fraction * 100.0
                ),
                Better::Lower,
                cpu(a),
                cpu(b),
            ));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::Percentiles;

    #[test]
    fn rounds_rotate_the_order() {
        let t = [1, 2, 3, 4];
        assert_eq!(rotation(&t, 0), vec![1, 2, 3, 4]);
        assert_eq!(rotation(&t, 1), vec![2, 3, 4, 1]);
        assert_eq!(rotation(&t, 5), vec![2, 3, 4, 1]);
        assert!(rotation::<u8>(&[], 3).is_empty());
    }

    #[test]
    fn rates_scale_down_to_verified_capacity() {
        // Top fixed rate 45k; 2× = 90k achieved only 50k: capacity 50k, so the new top is 22.5k,
        // a scale of 0.5.
        let s = next_scale(1.0, 45_000.0, 90_000.0, 50_000.0, false);
        assert!((s - 0.5).abs() < 1e-9, "{s}");
        // Rate kept but the generator lagged: capacity taken as 80 % of it (72k), top 32.4k.
        let s = next_scale(1.0, 45_000.0, 90_000.0, 90_000.0, true);
        assert!((s - 0.72).abs() < 1e-9, "{s}");
        // Nearly enough: still shrink by at least 20 %.
        let s = next_scale(0.5, 22_500.0, 45_000.0, 44_000.0, false);
        assert!(s <= 0.4 + 1e-12, "{s}");
        assert!(next_scale(1.0, 45_000.0, 90_000.0, 0.0, false) > 0.0);
    }

    #[test]
    fn bottleneck_classification() {
        // The proxy's core is full: the proxy is measured.
        assert_eq!(
            classify(Some(0.97), 0.7, Some(0.8), Some(0.98)),
            Bottleneck::Target
        );
        // The load core is full with the generator and upstream first: the generator is measured.
        assert_eq!(
            classify(Some(0.6), 0.95, Some(0.99), Some(0.6)),
            Bottleneck::Generator
        );
        // Other processes fill a bench core: the run is contended, not proxy- or generator-bound.
        assert_eq!(
            classify(Some(0.6), 0.5, Some(0.95), Some(0.6)),
            Bottleneck::Contended
        );
        assert_eq!(
            classify(Some(0.2), 0.5, Some(0.5), Some(0.99)),
            Bottleneck::Contended
        );
        // Direct has no proxy.
        assert_eq!(
            classify(None, 0.96, Some(0.97), None),
            Bottleneck::Generator
        );
        assert_eq!(
            classify(Some(0.3), 0.3, Some(0.4), Some(0.3)),
            Bottleneck::Neither
        );
    }

    fn pct(p99: f64) -> Percentiles {
        Percentiles {
            count: 1000,
            min_us: 1.0,
            mean_us: p99 / 2.0,
            p50_us: p99 / 2.0,
            p90_us: p99 * 0.8,
            p99_us: p99,
            p999_us: p99 * 1.5,
            max_us: p99 * 2.0,
        }
    }

    fn report_with(latency_p99: f64, lag_p99: f64) -> load::LoadReport {
        load::LoadReport {
            protocol: Protocol::Http1,
            mode: Mode::Open { rate: 1000.0 },
            connections: 1,
            lanes: 1,
            threads: 1,
            io: Io::Epoll,
            duration_s: 1.0,
            scheduled: Some(1000),
            completed: 1000,
            achieved_rate: 1000.0,
            errors: Default::default(),
            latency: Some(pct(latency_p99)),
            uncorrected: Some(pct(latency_p99)),
            generator_lag: Some(pct(lag_p99)),
            curve: vec![],
            generator_cpu_s: 0.1,
            verdict: load::Verdict::Valid,
        }
    }

    #[test]
    fn generator_lag_flags_only_when_it_matters() {
        // report_with sets the lag p90 to 0.8 × its second argument.
        assert!(
            !generator_lagging(&report_with(200.0, 25.0)),
            "timer wake-up noise"
        );
        assert!(
            !generator_lagging(&report_with(200.0, 120.0)),
            "p90 96 µs: keeping up"
        );
        assert!(
            generator_lagging(&report_with(200.0, 200.0)),
            "p90 160 µs: behind"
        );
    }

    fn record(
        kind: TargetKind,
        round: usize,
        fraction: Option<f64>,
        rate: f64,
        p99: f64,
    ) -> RunRecord {
        let mut load = report_with(p99, 1.0);
        load.achieved_rate = rate;
        RunRecord {
            target: kind,
            round,
            fraction,
            load,
            proxy_cpu_s: Some(1.0),
            cpu_per_1k: Some(rate / 1000.0),
            proxy_util: Some(0.5),
            rss_mib: Some(10.0),
            wall_s: 1.0,
            upstream_cpu_s: 0.2,
            load_side_util: 0.5,
            load_core_busy: Some(0.5),
            proxy_core_busy: Some(0.5),
            foreign_cpu: Some(0.0),
            bottleneck: Bottleneck::Target,
            generator_limited: false,
            resumed_share: None,
        }
    }

    #[test]
    fn slowest_proxy_sets_the_rates_and_added_latency_is_paired() {
        let runs = vec![
            record(TargetKind::Direct, 0, None, 150_000.0, 100.0),
            record(TargetKind::Nginx, 0, None, 60_000.0, 300.0),
            record(TargetKind::Haproxy, 0, None, 70_000.0, 300.0),
            record(TargetKind::Direct, 1, None, 140_000.0, 100.0),
            record(TargetKind::Nginx, 1, None, 62_000.0, 300.0),
            record(TargetKind::Haproxy, 1, None, 66_000.0, 300.0),
            record(TargetKind::Direct, 0, Some(0.5), 30_000.0, 50.0),
            record(TargetKind::Nginx, 0, Some(0.5), 30_000.0, 150.0),
            record(TargetKind::Direct, 1, Some(0.5), 30_000.0, 70.0),
            record(TargetKind::Nginx, 1, Some(0.5), 30_000.0, 160.0),
        ];
        let max: Vec<MaxSummary> = [TargetKind::Direct, TargetKind::Nginx, TargetKind::Haproxy]
            .into_iter()
            .map(|k| summarise_max(k, &runs))
            .collect();
        assert_eq!(slowest_max(&max), Some(61_000.0));
        let nginx = summarise_latency(TargetKind::Nginx, 0.5, &runs, None);
        let added = nginx.added_p99.expect("paired rounds");
        // Round 1: 150 − 50 = 100; round 2: 160 − 70 = 90.
        assert_eq!((added.min, added.max, added.median), (90.0, 100.0, 95.0));
        assert_eq!(nginx.valid_runs, 2);
        let direct = summarise_latency(TargetKind::Direct, 0.5, &runs, None);
        assert!(direct.added_p99.is_none());
    }

    #[test]
    fn refused_runs_do_not_contribute_latency() {
        let mut bad = record(TargetKind::Nginx, 1, Some(0.5), 20_000.0, 9_999.0);
        bad.load.verdict = load::Verdict::RateShortfall {
            achieved: 20_000.0,
            target: 30_000.0,
        };
        let runs = vec![
            record(TargetKind::Nginx, 0, Some(0.5), 30_000.0, 150.0),
            bad,
        ];
        let s = summarise_latency(TargetKind::Nginx, 0.5, &runs, None);
        assert_eq!(s.runs, 2);
        assert_eq!(s.valid_runs, 1);
        assert_eq!(s.p99.map(|p| p.median), Some(150.0));
        assert_eq!(s.refused.len(), 1);
        assert!(
            s.refused[0].contains("rate not achieved"),
            "{:?}",
            s.refused
        );
    }
}
