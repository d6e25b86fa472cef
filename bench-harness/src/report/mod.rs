//! The comparison report: its data model (serialised as `report.json`), and its renderings as
//! Markdown ([`markdown`]) and as a self-contained HTML page with inline SVG plots ([`html`]).
//!
//! The JSON holds every run (so any number in the tables can be traced to its runs) and the
//! summaries computed from them; `ringmesh-bench report FILE.json` re-renders the Markdown and
//! HTML from it without running anything.

pub mod flapping;
pub mod html;
pub mod markdown;

use serde::{Deserialize, Serialize};

use crate::hist::{CurvePoint, Percentiles};
use crate::load::LoadReport;
use crate::stats::Spread;
use crate::sys::Machine;
use crate::targets::TargetKind;

/// A whole `compare` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    /// How, when and where it was measured.
    pub meta: Meta,
    /// The self-checks and their outcomes.
    pub checks: Vec<Check>,
    /// Things a reader must know to trust (or distrust) the numbers.
    pub warnings: Vec<String>,
    /// HTTP/1.1, HTTP/2 and TCP echo scenarios.
    pub scenarios: Vec<ScenarioReport>,
    /// The iperf3 L4 scenario.
    pub iperf: Option<IperfReport>,
    /// Open-loop latency against `h2load --rps`.
    pub crosscheck: Option<CrossCheck>,
}

/// Provenance and parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// `ringmesh-bench` version.
    pub tool_version: String,
    /// The command line.
    pub command: String,
    /// Git commit of the working tree (`-dirty` when modified).
    pub commit: Option<String>,
    /// Start, UTC.
    pub date: String,
    /// Wall time of the whole comparison, seconds.
    pub elapsed_s: f64,
    /// The machine.
    pub machine: Machine,
    /// I/O driver of the generator and upstream.
    pub generator_io: String,
    /// Cores of the proxy under test.
    pub proxy_cores: Vec<usize>,
    /// Cores of the generator and the upstream.
    pub load_cores: Vec<usize>,
    /// Worker processes/threads per proxy.
    pub workers: usize,
    /// Rounds (targets alternate within each round).
    pub rounds: usize,
    /// Measured seconds per latency run.
    pub duration_s: f64,
    /// Measured seconds per maximum-throughput run.
    pub max_duration_s: f64,
    /// Unmeasured warm-up seconds before each run.
    pub warmup_s: f64,
    /// Connections for latency runs.
    pub connections: usize,
    /// Connections for maximum-throughput runs.
    pub max_connections: usize,
    /// Streams per HTTP/2 connection.
    pub streams: usize,
    /// Response body (HTTP) or message (echo) bytes.
    pub payload: usize,
    /// Request body bytes (0 = GET).
    pub request_body: usize,
    /// Fixed rates as fractions of the slowest proxy's maximum throughput.
    pub load_fractions: Vec<f64>,
    /// The fraction whose numbers are the headline (added p99, CPU per request).
    pub headline_fraction: f64,
    /// `--quick` smoke mode.
    pub quick: bool,
}

/// One self-check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// `Some(true)` passed, `Some(false)` failed, `None` could not run.
    pub passed: Option<bool>,
    /// The evidence.
    pub detail: String,
}

/// Whether a target ran in a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    /// Which.
    pub kind: TargetKind,
    /// `None` when it ran; the reason otherwise.
    pub skipped: Option<String>,
    /// Version string.
    pub version: String,
    /// Extra facts (ringmesh's driver).
    pub detail: Option<String>,
    /// TLS scenarios: what the harness's probe handshake negotiated with the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

/// What limited a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bottleneck {
    /// The proxy's cores were saturated: the number measures the proxy.
    Target,
    /// The generator/upstream cores were saturated first: the number is a lower bound for the
    /// proxy.
    Generator,
    /// A bench core was saturated, but by processes outside the benchmark: the run is noisy.
    Contended,
    /// Neither saturated (latency-bound: more connections would go faster), or not measured.
    Neither,
}

impl Bottleneck {
    /// Short label.
    pub fn label(self) -> &'static str {
        match self {
            Bottleneck::Target => "target",
            Bottleneck::Generator => "generator",
            Bottleneck::Contended => "other processes",
            Bottleneck::Neither => "neither",
        }
    }
}

/// A load run against a target, with what the harness measured around it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Target.
    pub target: TargetKind,
    /// Round (0-based).
    pub round: usize,
    /// Fraction of the slowest maximum (open loop), `None` for maximum-throughput runs.
    pub fraction: Option<f64>,
    /// The generator's report.
    pub load: LoadReport,
    /// CPU seconds of the proxy's process tree in the window.
    pub proxy_cpu_s: Option<f64>,
    /// Proxy CPU seconds per 1000 successful requests.
    pub cpu_per_1k: Option<f64>,
    /// Proxy CPU use as a share of its cores (0–1).
    pub proxy_util: Option<f64>,
    /// Largest resident memory of the proxy's process tree sampled during the run, MiB.
    pub rss_mib: Option<f64>,
    /// Wall seconds between the two samples around the window.
    pub wall_s: f64,
    /// CPU seconds of the upstream in the window.
    pub upstream_cpu_s: f64,
    /// CPU of the generator and the upstream, as a share of the load cores (0–1).
    pub load_side_util: f64,
    /// Busy share (0–1) of the generator/upstream cores, everything included.
    pub load_core_busy: Option<f64>,
    /// Busy share (0–1) of the proxy cores, everything included.
    pub proxy_core_busy: Option<f64>,
    /// Share of the bench cores used by processes that are not part of the benchmark (noise).
    pub foreign_cpu: Option<f64>,
    /// What limited the run.
    pub bottleneck: Bottleneck,
    /// Open loop: the generator, not the target, made latency (large generator lag).
    pub generator_limited: bool,
    /// TLS handshake runs: the share of the generator's handshakes (whole run, warm-up
    /// included) that resumed a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_share: Option<f64>,
}

/// Maximum throughput of one target, over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaxSummary {
    /// Target.
    pub kind: TargetKind,
    /// Requests per second.
    pub rps: Option<Spread>,
    /// Proxy CPU seconds per 1000 requests at maximum.
    pub cpu_per_1k: Option<Spread>,
    /// Proxy CPU use, share of its cores.
    pub proxy_util: Option<Spread>,
    /// Most common bottleneck over rounds.
    pub bottleneck: Bottleneck,
    /// Service-time p99 at maximum (closed loop), µs.
    pub p99_us: Option<Spread>,
}

/// Latency of one target at one fixed rate, over rounds (valid runs only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Target.
    pub kind: TargetKind,
    /// Runs.
    pub runs: usize,
    /// Runs whose verdict was valid (only these contribute latency).
    pub valid_runs: usize,
    /// Why the invalid runs were refused.
    pub refused: Vec<String>,
    /// Achieved requests per second (all runs).
    pub achieved: Option<Spread>,
    /// Percentiles over valid runs, µs.
    pub p50: Option<Spread>,
    /// 90th.
    pub p90: Option<Spread>,
    /// 99th.
    pub p99: Option<Spread>,
    /// 99.9th.
    pub p999: Option<Spread>,
    /// Max.
    pub max: Option<Spread>,
    /// Proxied p50 − direct p50 in the same round, µs.
    pub added_p50: Option<Spread>,
    /// Proxied p99 − direct p99 in the same round, µs.
    pub added_p99: Option<Spread>,
    /// Proxy CPU seconds per 1000 requests.
    pub cpu_per_1k: Option<Spread>,
    /// Proxy CPU use, share of its cores.
    pub proxy_util: Option<Spread>,
    /// Peak RSS, MiB.
    pub rss_mib: Option<Spread>,
    /// Largest generator-lag p90 over valid runs, µs.
    pub generator_lag_p90_us: Option<f64>,
    /// Some run was generator-limited.
    pub generator_limited: bool,
    /// Percentile curve of all valid runs merged.
    pub curve: Vec<CurvePoint>,
}

/// One fixed rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateLevel {
    /// Nominal fraction of the slowest proxy's maximum (`--load`).
    pub fraction: f64,
    /// Actual fraction: nominal × the scenario's rate scale.
    pub of_slowest: f64,
    /// Requests per second.
    pub rate: f64,
    /// Whether the generator sustained 2× the highest fixed rate against direct (`None`: not
    /// checked).
    pub headroom: Option<bool>,
    /// Per target.
    pub targets: Vec<LatencySummary>,
}

/// `a / b` for one metric, paired by round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatioRow {
    /// Metric name.
    pub metric: String,
    /// Numerator.
    pub a: TargetKind,
    /// Denominator.
    pub b: TargetKind,
    /// Which direction is better for `a`.
    pub better: Better,
    /// Ratio over rounds.
    pub ratio: Option<Spread>,
}

/// Which way a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// More is better (throughput).
    Higher,
    /// Less is better (latency, CPU).
    Lower,
}

/// A scenario (protocol) of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// `http1`, `h2`, `echo`.
    pub name: String,
    /// Human title.
    pub title: String,
    /// The targets and whether they ran.
    pub targets: Vec<TargetStatus>,
    /// Maximum throughput per target.
    pub max: Vec<MaxSummary>,
    /// The slowest proxy's median maximum throughput, which the fixed rates are fractions of.
    pub slowest_max: Option<f64>,
    /// Factor applied to every fixed rate so the generator has 2× headroom (1 = none needed).
    pub rate_scale: f64,
    /// The generator's open-loop rate against direct when it could not double the fixed rates.
    pub generator_capacity: Option<f64>,
    /// Latency at fixed rates.
    pub rates: Vec<RateLevel>,
    /// Ratios between proxies.
    pub ratios: Vec<RatioRow>,
    /// Memory per idle keep-alive connection, per proxy.
    pub idle_memory: Vec<IdleMemory>,
    /// Every run.
    pub runs: Vec<RunRecord>,
    /// TLS scenarios: new handshakes per second (absent in other scenarios and older reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<HandshakeReport>,
    /// TLS scenarios: the same with session resumption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_handshakes: Option<HandshakeReport>,
}

/// New TLS handshakes per second: closed loop, each request on a new connection with a full
/// handshake (`resumption` false) or one resumed from the target's previous tickets, and
/// `Connection: close`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeReport {
    /// Concurrent connections (lanes) of the closed loop.
    pub connections: usize,
    /// Whether the client resumed sessions (false: every handshake is a full one).
    pub resumption: bool,
    /// Per target: `rps` is handshakes per second, `cpu_per_1k` proxy CPU s per 1000 handshakes.
    pub max: Vec<MaxSummary>,
    /// Every run.
    pub runs: Vec<RunRecord>,
}

/// Memory of idle keep-alive connections in one proxy, over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleMemory {
    /// Target.
    pub kind: TargetKind,
    /// Connections opened.
    pub connections: usize,
    /// RSS growth of the proxy's process tree per connection, KiB.
    pub kib_per_connection: Option<Spread>,
}

/// iperf3 through each L4 target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IperfReport {
    /// Targets and whether they ran.
    pub targets: Vec<TargetStatus>,
    /// Seconds per run.
    pub duration_s: f64,
    /// Results per target and stream count.
    pub rows: Vec<IperfRow>,
    /// iperf3 version.
    pub version: String,
}

/// iperf3 results of one target at one stream count, over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IperfRow {
    /// Target.
    pub kind: TargetKind,
    /// Parallel streams.
    pub streams: usize,
    /// Gbit/s received.
    pub gbps: Option<Spread>,
    /// Proxy CPU seconds per GB transferred.
    pub cpu_s_per_gb: Option<Spread>,
    /// Proxy CPU use, share of its cores.
    pub proxy_util: Option<Spread>,
    /// Failed rounds and why.
    pub failures: Vec<String>,
}

/// Our open-loop latency against h2load's, at the same total rate, on the direct target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrossCheck {
    /// Requests per second (total).
    pub rate: f64,
    /// Seconds per run.
    pub duration_s: f64,
    /// The comparisons made.
    pub cases: Vec<CrossCase>,
    /// Whether the judged case agrees within the stated tolerance (`None`: not compared).
    pub agrees: Option<bool>,
    /// The comparison in words.
    pub note: String,
}

/// One comparison of the cross-check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrossCase {
    /// What is compared.
    pub name: String,
    /// Connections (h2load clients).
    pub connections: usize,
    /// Our lanes started together like h2load's clients (bursts) instead of spread evenly.
    pub aligned: bool,
    /// Whether this case decides agreement (the others explain differences).
    pub judged: bool,
    /// Ours, latency as reported (coordinated-omission corrected).
    pub ours_corrected: Option<Percentiles>,
    /// Ours, from the actual send time (what h2load measures).
    pub ours_uncorrected: Option<Percentiles>,
    /// Our achieved rate.
    pub ours_rate: f64,
    /// h2load's, from its per-request log.
    pub h2load: Option<Percentiles>,
    /// h2load's achieved rate.
    pub h2load_rate: Option<f64>,
    /// Agreement at p50 and p90.
    pub agrees: Option<bool>,
}

/// Formats a number of requests per second: `61.2k`.
pub fn fmt_rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// Formats microseconds: `48 µs`, `1.25 ms`.
pub fn fmt_us(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v.abs() >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// `median (min–max)` with a formatter, or `—`.
pub fn fmt_spread(s: &Option<Spread>, f: impl Fn(f64) -> String) -> String {
    match s {
        None => "—".to_owned(),
        Some(s) if s.n <= 1 => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

/// Just the median, or `—`.
pub fn fmt_median(s: &Option<Spread>, f: impl Fn(f64) -> String) -> String {
    s.as_ref().map_or_else(|| "—".to_owned(), |s| f(s.median))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_rate(61_234.0), "61.2k");
        assert_eq!(fmt_rate(1_500.0), "1.50k");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_us(48.4), "48 µs");
        assert_eq!(fmt_us(1250.0), "1.25 ms");
        assert_eq!(fmt_us(-20.0), "-20 µs");
        let s = Spread::of(&[1.0, 2.0, 3.0]);
        assert_eq!(fmt_spread(&s, |v| format!("{v:.0}")), "2 (1–3)");
        assert_eq!(fmt_spread(&None, |v| format!("{v:.0}")), "—");
        assert_eq!(fmt_spread(&Spread::of(&[5.0]), |v| format!("{v:.0}")), "5");
    }
}
