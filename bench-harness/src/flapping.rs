//! `flapping`: a client hitting a cluster with one flapping endpoint through ringmesh, without and
//! with retries + outlier detection, as a time series.
//!
//! ```text
//! generator ──HTTP/1.1, open loop──► ringmesh ──► upstream 1 (flaps: 503 or reset while down)
//!  (load cores)                     (proxy cores) ├► upstream 2
//!                                                 └► upstream 3   (upstreams: load cores)
//! ```
//!
//! The upstreams are built-in ones ([`crate::upstream`]) running in this process, like the
//! generator, on the load cores; the flapping one is down during the first `down` of every
//! `period`, counted from the Unix epoch ([`crate::upstream::Flap`]).
//! Each variant starts its own ringmesh (so no ejection carries over), and its measurement window
//! starts on a cycle boundary ([`crate::load::TimelineSpec::align_to`]), so both variants see the
//! same phases at the same offsets and their curves can share an axis. Per time bucket the
//! generator records the share of 2xx answers and the latency of the successful requests
//! ([`crate::timeline`]); ringmesh's retry and ejection counters are read from
//! `/stats/prometheus` before and after each window.
//!
//! This is not part of `compare`: `compare` runs many targets over rounds at rates derived from
//! their maxima, and refuses any run with more than 0.1 % failures — here failures are the
//! measurement, the target is ringmesh alone in two configurations, and the result is a curve
//! over time, not a distribution. So it writes its own report directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::compare::log;
use crate::hist::Percentiles;
use crate::load::{self, ErrorCounts, LoadSpec, Mode, Protocol, TimelineSpec};
use crate::runtime::Io;
use crate::sys::{self, Machine};
use crate::targets::{self, TargetKind, TargetSettings};
use crate::timeline::BucketSummary;
use crate::upstream::{self, Flap, UpstreamSpec};

/// The two configurations of ringmesh compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// No policies: whatever the flapping endpoint answers reaches the client.
    Plain,
    /// Retries on the route, outlier detection on the cluster.
    Resilient,
}

impl Variant {
    /// Both, in run order.
    pub const ALL: [Variant; 2] = [Variant::Plain, Variant::Resilient];

    /// Short name (directories, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Resilient => "resilient",
        }
    }

    /// Display name.
    pub fn title(self) -> &'static str {
        match self {
            Variant::Plain => "no policies",
            Variant::Resilient => "retries + outlier detection",
        }
    }
}

/// The policies of [`Variant::Resilient`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    /// `retries.attempts` (tries in all).
    pub attempts: u32,
    /// `outlier_detection.consecutive_5xx`.
    pub consecutive_5xx: u32,
    /// `outlier_detection.base_ejection_time`.
    pub base_ejection_time: Duration,
    /// `outlier_detection.max_ejection_time`.
    pub max_ejection_time: Duration,
    /// `outlier_detection.interval`.
    pub interval: Duration,
}

/// Everything `flapping` needs.
#[derive(Debug, Clone)]
pub struct FlappingSpec {
    /// The flapping endpoint's cycle.
    pub flap: Flap,
    /// Endpoints in the cluster (the first one flaps).
    pub endpoints: usize,
    /// Requests per second, open loop.
    pub rate: f64,
    /// HTTP/1.1 connections of the generator.
    pub connections: usize,
    /// Measured time per variant.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Time bucket of the curves.
    pub bucket: Duration,
    /// Time allowed per request.
    pub timeout: Duration,
    /// Response body bytes.
    pub payload: usize,
    /// The policies of the resilient variant.
    pub policies: Policies,
    /// Generator and upstream cores.
    pub load_cores: Vec<usize>,
    /// I/O driver of the generator and the upstreams.
    pub io: Io,
    /// ringmesh's binary, workers, cores and driver; `dir` gets its configs and logs.
    pub targets_settings: TargetSettings,
    /// Output directory.
    pub out_dir: PathBuf,
    /// The command line, for the report.
    pub command: String,
    /// Draw progress bars.
    pub progress: bool,
}

/// The result of `flapping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlappingReport {
    /// Provenance and settings.
    pub meta: FlappingMeta,
    /// One per variant, in run order.
    pub variants: Vec<VariantReport>,
}

/// Provenance and settings of a `flapping` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlappingMeta {
    /// Harness version.
    pub tool_version: String,
    /// Command line.
    pub command: String,
    /// Git commit, when known.
    pub commit: Option<String>,
    /// UTC start time.
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// ringmesh's version line.
    pub ringmesh_version: String,
    /// The flapping cycle.
    pub flap: Flap,
    /// Endpoints in the cluster; the first flaps.
    pub endpoints: usize,
    /// Requests per second.
    pub rate: f64,
    /// Generator connections.
    pub connections: usize,
    /// Measured seconds per variant.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Bucket seconds.
    pub bucket_s: f64,
    /// Per-request timeout, seconds.
    pub timeout_s: f64,
    /// Proxy cores.
    pub proxy_cores: Vec<usize>,
    /// Generator and upstream cores.
    pub load_cores: Vec<usize>,
    /// ringmesh workers.
    pub workers: usize,
    /// The policies of the resilient variant.
    pub policies: Policies,
    /// Notes (unpinned runs, a busy machine).
    pub warnings: Vec<String>,
}

/// One variant's run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantReport {
    /// Which.
    pub variant: Variant,
    /// Why it did not run, if it did not.
    pub skipped: Option<String>,
    /// The ringmesh config it ran with.
    pub config: String,
    /// Requests intended in the window.
    pub scheduled: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Failures by cause.
    pub errors: ErrorCounts,
    /// `ok / (ok + failed)`.
    pub success_rate: Option<f64>,
    /// Latency of the successful requests (from their intended send time).
    pub latency: Option<Percentiles>,
    /// Where in the flapping cycle the window started, seconds (0 when aligned).
    pub window_phase_s: f64,
    /// `ringmesh_cluster_upstream_retries_total` during the window (all clusters).
    pub retries: Option<f64>,
    /// `ringmesh_endpoint_ejections_total` during the window (all endpoints).
    pub ejections: Option<f64>,
    /// The curves.
    pub timeline: Vec<BucketSummary>,
}

/// The metric names read from `/stats/prometheus`.
pub const RETRIES_METRIC: &str = "ringmesh_cluster_upstream_retries_total";
/// See [`RETRIES_METRIC`].
pub const EJECTIONS_METRIC: &str = "ringmesh_endpoint_ejections_total";

/// The ringmesh config of `variant` in front of `endpoints`.
pub fn ringmesh_config(
    variant: Variant,
    endpoints: &[SocketAddr],
    workers: usize,
    p: &Policies,
) -> String {
    let mut c = format!(
        "# Generated by ringmesh-bench flapping ({}).\n\
         [admin]\n\
         address = \"127.0.0.1:0\"\n\
         \n\
         [runtime]\n\
         workers = {workers}\n\
         drain_timeout = \"1s\"\n\
         \n\
         [[listeners]]\n\
         name = \"bench\"\n\
         address = \"127.0.0.1:0\"\n\
         protocol = \"auto\"\n\
         \n\
         [[virtual_hosts]]\n\
         name = \"bench\"\n\
         domains = [\"*\"]\n\
         \n\
         [[virtual_hosts.routes]]\n\
         match = {{ path_prefix = \"/\" }}\n\
         cluster = \"upstream\"\n",
        variant.title()
    );
    if variant == Variant::Resilient {
        c.push_str(&format!(
            "retries = {{ attempts = {}, retry_on = [\"5xx\", \"reset\", \"connect-failure\"] }}\n",
            p.attempts
        ));
    }
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    c.push_str(&format!(
        "\n[[clusters]]\nname = \"upstream\"\nendpoints = [{}]\n",
        list.join(", ")
    ));
    if variant == Variant::Resilient {
        c.push_str(&format!(
            "outlier_detection = {{ consecutive_5xx = {}, base_ejection_time = \"{}ms\", \
             max_ejection_time = \"{}ms\", interval = \"{}ms\" }}\n",
            p.consecutive_5xx,
            p.base_ejection_time.as_millis(),
            p.max_ejection_time.as_millis(),
            p.interval.as_millis()
        ));
    }
    c
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text exposition; `None`
/// when the metric is absent.
pub fn prometheus_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{labels} value` or `name value`; not `name_other …`.
        let rest = match rest.chars().next() {
            Some('{') => rest.split_once('}').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = rest
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The down phases of `flap` inside a window of `duration` that starts `phase` into a cycle, as
/// `(from, to)` seconds after the window start.
pub fn down_phases(flap: &Flap, phase: Duration, duration: Duration) -> Vec<(f64, f64)> {
    let (period, down) = (flap.period.as_secs_f64(), flap.down.as_secs_f64());
    let (phase, end) = (phase.as_secs_f64(), duration.as_secs_f64());
    if period <= 0.0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    // The cycle that contains the window start begins `phase` before it.
    let mut cycle = -phase;
    while cycle < end {
        let (from, to) = (cycle.max(0.0), (cycle + down).min(end));
        if to > from {
            out.push((from, to));
        }
        cycle += period;
    }
    out
}

/// Where in `flap`'s cycle the wall-clock instant `t` is.
pub fn phase_of(flap: &Flap, t: SystemTime) -> Duration {
    let period = flap.period.as_nanos().max(1);
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Duration::from_nanos(u64::try_from(since % period).unwrap_or(0))
}

/// Runs both variants.
pub fn run(spec: &FlappingSpec) -> anyhow::Result<FlappingReport> {
    spec.flap.validate().map_err(anyhow::Error::msg)?;
    if spec.endpoints < 2 {
        bail!("the cluster needs at least 2 endpoints (one flaps)");
    }
    std::fs::create_dir_all(&spec.targets_settings.dir)
        .with_context(|| format!("cannot create {}", spec.targets_settings.dir.display()))?;
    let date = sys::utc_timestamp(SystemTime::now());
    let machine = Machine::detect();
    let mut warnings = Vec::new();
    if machine.loadavg_at_start > 0.5 {
        warnings.push(format!(
            "Load average was {:.2} at start: other work was running on this machine.",
            machine.loadavg_at_start
        ));
    }
    let proxy_cores = &spec.targets_settings.cores;
    if proxy_cores.is_empty() || spec.load_cores.is_empty() {
        warnings.push("Runs are not pinned: proxy and generator share all cores.".to_owned());
    }
    if let Some(&core) = spec.load_cores.first()
        && !crate::runtime::pin_current_thread(core)
    {
        warnings.push(format!("Could not pin the harness itself to core {core}."));
    }

    // In this process, like the generator, pinned to the load cores; they serve until it exits.
    let mut endpoints = Vec::with_capacity(spec.endpoints);
    for i in 0..spec.endpoints {
        let addrs = upstream::start(&UpstreamSpec {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            h2: None,
            echo: None,
            threads: 1,
            cores: spec.load_cores.clone(),
            io: spec.io,
            payload: spec.payload,
            flap: (i == 0).then_some(spec.flap),
            https: None,
            https_mtls: None,
            tls: None,
        })
        .context("cannot start an upstream")?;
        endpoints.push(addrs.http.context("an upstream did not bind HTTP")?);
    }
    log(&format!(
        "upstreams: {} (the first flaps: down {:?} of every {:?}, {})",
        endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        spec.flap.down,
        spec.flap.period,
        spec.flap.mode.name()
    ));

    let mut ringmesh_version = String::new();
    let mut variants = Vec::new();
    for variant in Variant::ALL {
        let config = ringmesh_config(
            variant,
            &endpoints,
            spec.targets_settings.workers,
            &spec.policies,
        );
        let (report, version) = run_variant(spec, variant, config);
        if ringmesh_version.is_empty() {
            ringmesh_version = version;
        }
        variants.push(report);
    }

    Ok(FlappingReport {
        meta: FlappingMeta {
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            command: spec.command.clone(),
            commit: sys::git_commit(),
            date,
            machine,
            ringmesh_version,
            flap: spec.flap,
            endpoints: spec.endpoints,
            rate: spec.rate,
            connections: spec.connections,
            duration_s: spec.duration.as_secs_f64(),
            warmup_s: spec.warmup.as_secs_f64(),
            bucket_s: spec.bucket.as_secs_f64(),
            timeout_s: spec.timeout.as_secs_f64(),
            proxy_cores: proxy_cores.clone(),
            load_cores: spec.load_cores.clone(),
            workers: spec.targets_settings.workers,
            policies: spec.policies.clone(),
            warnings,
        },
        variants,
    })
}

/// One variant: its own ringmesh, one open-loop run, counters around it. Never fails: a variant
/// that cannot run is reported as skipped with the reason. Returns ringmesh's version too.
fn run_variant(spec: &FlappingSpec, variant: Variant, config: String) -> (VariantReport, String) {
    let mut report = VariantReport {
        variant,
        skipped: None,
        config,
        scheduled: 0,
        ok: 0,
        errors: ErrorCounts::default(),
        success_rate: None,
        latency: None,
        window_phase_s: 0.0,
        retries: None,
        ejections: None,
        timeline: Vec::new(),
    };
    let dir = spec
        .targets_settings
        .dir
        .join(format!("ringmesh-{}", variant.name()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        report.skipped = Some(format!("cannot create {}: {e}", dir.display()));
        return (report, String::new());
    }
    let mut target = match targets::launch_ringmesh(
        TargetKind::Ringmesh,
        &report.config,
        &spec.targets_settings,
        &dir,
    ) {
        Ok(t) => t,
        Err(e) => {
            log(&format!("{}: skipped: {e}", variant.title()));
            report.skipped = Some(e);
            return (report, String::new());
        }
    };
    let version = target.version.clone();
    log(&format!(
        "{}: ringmesh on {} (pid {:?}), {:.0} req/s for {:?}",
        variant.title(),
        target.address,
        target.pid(),
        spec.rate,
        spec.duration
    ));
    let load = LoadSpec {
        protocol: Protocol::Http1,
        address: target.address,
        host: "bench".into(),
        path: format!("/payload/{}", spec.payload),
        request_body: 0,
        payload: spec.payload,
        connections: spec.connections,
        streams: 1,
        mode: Mode::Open { rate: spec.rate },
        duration: spec.duration,
        warmup: spec.warmup,
        threads: 1,
        cores: spec.load_cores.clone(),
        io: spec.io,
        timeout: spec.timeout,
        label: format!("flapping: {}", variant.title()),
        progress: spec.progress,
        align_lanes: false,
        tls: None,
        new_connection_per_request: false,
    };
    let mut counters = Counters::new(target.admin);
    let timeline = TimelineSpec {
        bucket: spec.bucket,
        align_to: Some(spec.flap.period),
    };
    let result = load::run_timed(&load, &mut counters, Some(timeline));
    target.stop();
    let run = match result {
        Ok(run) => run,
        Err(e) => {
            report.skipped = Some(format!("the load run failed: {e:#}"));
            return (report, version);
        }
    };
    let r = &run.report;
    let failed = r.errors.total();
    report.scheduled = r.scheduled.unwrap_or(r.completed + failed);
    report.ok = r.completed;
    report.errors = r.errors;
    report.success_rate =
        (r.completed + failed > 0).then(|| r.completed as f64 / (r.completed + failed) as f64);
    report.latency = r.latency;
    report.window_phase_s = phase_of(&spec.flap, run.window_start).as_secs_f64();
    report.retries = counters.delta(RETRIES_METRIC);
    report.ejections = counters.delta(EJECTIONS_METRIC);
    report.timeline = run.timeline;
    (report, version)
}

/// Reads ringmesh's `/stats/prometheus` at the start and the end of the measurement window.
struct Counters {
    admin: Option<SocketAddr>,
    start: Option<String>,
    end: Option<String>,
}

impl Counters {
    fn new(admin: Option<SocketAddr>) -> Self {
        Self {
            admin,
            start: None,
            end: None,
        }
    }

    fn scrape(&self) -> Option<String> {
        let (status, body) = targets::admin_get(self.admin?, "/stats/prometheus").ok()?;
        (status == 200).then_some(body)
    }

    /// The growth of `name` over the window; a metric absent at the start counts from 0.
    fn delta(&self, name: &str) -> Option<f64> {
        let end = prometheus_sum(self.end.as_deref()?, name)?;
        let start = self
            .start
            .as_deref()
            .and_then(|t| prometheus_sum(t, name))
            .unwrap_or(0.0);
        Some(end - start)
    }
}

impl load::Monitor for Counters {
    fn window_start(&mut self) {
        self.start = self.scrape();
    }

    fn window_end(&mut self) {
        self.end = self.scrape();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::FlapMode;

    fn flap() -> Flap {
        Flap {
            period: Duration::from_secs(5),
            down: Duration::from_secs(2),
            mode: FlapMode::Status503,
        }
    }

    #[test]
    fn the_schedule_is_down_at_the_start_of_each_cycle() {
        let f = flap();
        let s = Duration::from_secs_f64;
        assert!(f.is_down_at(s(0.0)));
        assert!(f.is_down_at(s(1.999)));
        assert!(!f.is_down_at(s(2.0)));
        assert!(!f.is_down_at(s(4.999)));
        assert!(f.is_down_at(s(5.0)));
        assert!(
            f.is_down_at(s(1_764_000_000.5)),
            "1764000000 is a multiple of 5"
        );
        assert!(!f.is_down_at(s(1_764_000_003.0)));
        assert!(f.validate().is_ok());
        let bad = Flap {
            down: Duration::from_secs(5),
            ..f
        };
        assert!(bad.validate().is_err());
        let zero = Flap {
            down: Duration::ZERO,
            ..f
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn down_phases_in_a_window() {
        let f = flap();
        // Aligned: down at 0–2, 5–7, 10–12 of a 12 s window.
        assert_eq!(
            down_phases(&f, Duration::ZERO, Duration::from_secs(12)),
            vec![(0.0, 2.0), (5.0, 7.0), (10.0, 12.0)]
        );
        // Starting 1 s into a cycle: the rest of its down phase, then the next ones.
        assert_eq!(
            down_phases(&f, Duration::from_secs(1), Duration::from_secs(10)),
            vec![(0.0, 1.0), (4.0, 6.0), (9.0, 10.0)]
        );
        // Starting in the up part.
        assert_eq!(
            down_phases(&f, Duration::from_secs(3), Duration::from_secs(4)),
            vec![(2.0, 4.0)]
        );
    }

    #[test]
    fn phase_of_the_wall_clock() {
        let f = flap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_001_250);
        assert_eq!(phase_of(&f, t), Duration::from_millis(1250));
    }

    #[test]
    fn prometheus_sums() {
        let text = "# HELP ringmesh_cluster_upstream_retries_total Retries.\n\
                    # TYPE ringmesh_cluster_upstream_retries_total counter\n\
                    ringmesh_cluster_upstream_retries_total{cluster=\"a\"} 12\n\
                    ringmesh_cluster_upstream_retries_total{cluster=\"b\"} 3\n\
                    ringmesh_cluster_upstream_retries_total_other 100\n\
                    ringmesh_endpoint_ejections_total{cluster=\"a\",endpoint=\"127.0.0.1:1\"} 2\n\
                    ringmesh_plain 7\n";
        assert_eq!(prometheus_sum(text, RETRIES_METRIC), Some(15.0));
        assert_eq!(prometheus_sum(text, EJECTIONS_METRIC), Some(2.0));
        assert_eq!(prometheus_sum(text, "ringmesh_plain"), Some(7.0));
        assert_eq!(prometheus_sum(text, "ringmesh_absent"), None);
        assert_eq!(
            prometheus_sum("ringmesh_plain garbage\n", "ringmesh_plain"),
            None
        );
    }

    #[test]
    fn both_configs_pass_the_schema() {
        let endpoints: Vec<SocketAddr> = (1..=3)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], 9000 + p)))
            .collect();
        let policies = Policies {
            attempts: 2,
            consecutive_5xx: 3,
            base_ejection_time: Duration::from_secs(2),
            max_ejection_time: Duration::from_secs(4),
            interval: Duration::from_secs(1),
        };
        for variant in Variant::ALL {
            let text = ringmesh_config(variant, &endpoints, 1, &policies);
            let config = match config_schema::parse(&text) {
                Ok(c) => c,
                Err(errors) => panic!("{variant:?}: {errors:?}\n{text}"),
            };
            let route = &config.spec.virtual_hosts[0].routes[0];
            let cluster = &config.spec.clusters[0];
            assert_eq!(cluster.endpoints.len(), 3, "{text}");
            let resilient = variant == Variant::Resilient;
            assert_eq!(route.retries.is_some(), resilient, "{text}");
            assert_eq!(cluster.outlier_detection.is_some(), resilient, "{text}");
        }
    }
}
