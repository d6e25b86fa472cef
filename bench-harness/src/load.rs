//! The load generator: closed loop (as fast as the target answers) or open loop (a constant rate,
//! latency corrected for coordinated omission), over HTTP/1.1 keep-alive, HTTP/2 or TCP echo.
//!
//! ```text
//! caller thread ── picks the start instant, samples the monitor at window start/end, draws progress
//! generator thread 0..T (pinned, one monoio runtime each)
//!    └─ lane tasks: one request at a time each (an h2 connection carries `streams` lanes)
//! ```
//!
//! A run is `warmup + duration` long; only requests *intended* (open loop) or *sent* (closed loop)
//! inside the measurement window `[start + warmup, start + warmup + duration)` count. The pacing
//! and the latency arithmetic are in [`crate::pace`].
//!
//! The verdict of a run ([`judge`]) is part of its result: an open-loop run that completed less
//! than [`MIN_RATE_FRACTION`] of its target rate, or that saw errors, is marked invalid and its
//! latency must not be reported as the target's latency at that rate.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, IntoPollIo};
use monoio::net::TcpStream;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hist::{CurvePoint, LatencyHist, Percentiles};
use crate::http1::{self, BodyReader, FramingError};
use crate::pace::{LaneClock, LaneSchedule, PreciseTimer, Timing};
use crate::progress::Progress;
use crate::runtime::{self, Io};
use crate::sys;
use crate::timeline::{BucketSummary, Timeline};
use crate::tls::{ClientTls, Conn, TlsConn};

/// An open-loop run must complete at least this share of its target rate to be valid.
pub const MIN_RATE_FRACTION: f64 = 0.97;
/// A run with more than this share of failed requests is invalid.
pub const MAX_ERROR_FRACTION: f64 = 0.001;
/// Largest response head the generator reads.
const MAX_HEAD: usize = 64 << 10;
/// Read buffer per connection.
const READ_BUF: usize = 64 << 10;

/// The protocol spoken to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, one request in flight per connection.
    Http1,
    /// HTTP/2 over cleartext (prior knowledge), `streams` requests in flight per connection.
    H2,
    /// TCP echo: write `payload` bytes, read them back.
    Echo,
}

impl Protocol {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Echo => "echo",
        }
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each lane sends its next request as soon as the previous answer arrives.
    Closed,
    /// The lanes together send `rate` requests per second on a fixed schedule.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Protocol.
    pub protocol: Protocol,
    /// Target address.
    pub address: SocketAddr,
    /// Host header / `:authority`.
    pub host: String,
    /// Request path (HTTP).
    pub path: String,
    /// Request body bytes (HTTP; 0 = GET, otherwise POST).
    pub request_body: usize,
    /// Message size (echo).
    pub payload: usize,
    /// Connections.
    pub connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub streams: usize,
    /// Closed or open loop.
    pub mode: Mode,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it (connections warm, pools filled, caches hot).
    pub warmup: Duration,
    /// Generator threads.
    pub threads: usize,
    /// Cores for the generator threads (round robin); empty = unpinned.
    pub cores: Vec<usize>,
    /// I/O driver.
    pub io: Io,
    /// Time allowed per request (and per connect).
    pub timeout: Duration,
    /// Label on the progress bar.
    pub label: String,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Open loop: start every lane at the same instant instead of spreading them evenly, so
    /// their requests go out in bursts of `lanes` (what `h2load --rps` does with several
    /// clients). Only for reproducing that tool's arrival pattern in the cross-check.
    pub align_lanes: bool,
    /// HTTP/1.1 over TLS with this client config (the `tls` and `mtls` scenarios); HTTP/1.1
    /// only.
    pub tls: Option<ClientTls>,
    /// HTTP/1.1: every request on a new connection (with `Connection: close`), so that each
    /// request costs the target a TCP accept and, with [`LoadSpec::tls`], a full TLS handshake;
    /// the connect and handshake are part of the request's time. A handshake that fails counts
    /// as a connect error.
    pub new_connection_per_request: bool,
}

impl LoadSpec {
    /// Lanes: requests that can be in flight at once.
    pub fn lanes(&self) -> usize {
        match self.protocol {
            Protocol::H2 => self.connections * self.streams.max(1),
            _ => self.connections,
        }
    }
}

/// Failed requests by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Could not connect.
    pub connect: u64,
    /// Read or write failed, or the peer closed mid-response.
    pub io: u64,
    /// Malformed response, or an HTTP/2 protocol error.
    pub protocol: u64,
    /// A non-2xx status.
    pub status: u64,
    /// No complete answer within the timeout.
    pub timeout: u64,
}

impl ErrorCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.protocol + self.status + self.timeout
    }

    fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.io += other.io;
        self.protocol += other.protocol;
        self.status += other.status;
        self.timeout += other.timeout;
    }

    fn count(&mut self, e: &RequestError) {
        match e {
            RequestError::Connect(_) => self.connect += 1,
            RequestError::Io(_) | RequestError::Closed => self.io += 1,
            RequestError::Framing(_) | RequestError::H2(_) => self.protocol += 1,
            RequestError::Status(_) => self.status += 1,
            RequestError::Timeout => self.timeout += 1,
        }
    }
}

/// Whether a run's numbers may be reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// The run did what it was asked.
    Valid,
    /// Open loop: the target rate was not achieved. Latency is not reported.
    RateShortfall {
        /// Requests per second completed.
        achieved: f64,
        /// Requests per second asked for.
        target: f64,
    },
    /// Too many requests failed.
    Errors {
        /// Failed requests.
        errors: u64,
        /// Successful requests.
        completed: u64,
    },
    /// No request completed at all.
    NoResponses,
}

impl Verdict {
    /// True for [`Verdict::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Valid => "valid".to_owned(),
            Verdict::RateShortfall { achieved, target } => format!(
                "rate not achieved: {achieved:.0} of {target:.0} req/s ({:.1} %); latency not reported",
                100.0 * achieved / target
            ),
            Verdict::Errors { errors, completed } => {
                format!("{errors} failed requests ({completed} succeeded); latency not reported")
            }
            Verdict::NoResponses => "no request completed".to_owned(),
        }
    }
}

/// Judges a run: see [`MIN_RATE_FRACTION`] and [`MAX_ERROR_FRACTION`].
pub fn judge(target_rate: Option<f64>, achieved: f64, completed: u64, errors: u64) -> Verdict {
    if completed == 0 {
        return Verdict::NoResponses;
    }
    if errors as f64 > MAX_ERROR_FRACTION * (completed + errors) as f64 {
        return Verdict::Errors { errors, completed };
    }
    match target_rate {
        Some(target) if achieved < MIN_RATE_FRACTION * target => {
            Verdict::RateShortfall { achieved, target }
        }
        _ => Verdict::Valid,
    }
}

/// The result of one run, as written to reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Protocol.
    pub protocol: Protocol,
    /// Closed or open loop.
    pub mode: Mode,
    /// Connections.
    pub connections: usize,
    /// Requests in flight at most.
    pub lanes: usize,
    /// Generator threads.
    pub threads: usize,
    /// I/O driver the generator ran on.
    pub io: Io,
    /// Measured seconds.
    pub duration_s: f64,
    /// Open loop: requests intended in the window.
    pub scheduled: Option<u64>,
    /// Successful requests in the window.
    pub completed: u64,
    /// Successful requests per second in the window.
    pub achieved_rate: f64,
    /// Failed requests in the window.
    pub errors: ErrorCounts,
    /// Latency: from the intended send time (open loop) or the send (closed loop).
    pub latency: Option<Percentiles>,
    /// Latency from the actual send (service time), for comparison with uncorrected tools.
    pub uncorrected: Option<Percentiles>,
    /// Open loop: how late the generator sent requests whose lane was free (its own lateness).
    pub generator_lag: Option<Percentiles>,
    /// Latency percentile curve.
    pub curve: Vec<CurvePoint>,
    /// CPU seconds the generator threads used in the window.
    pub generator_cpu_s: f64,
    /// Whether the numbers may be reported.
    pub verdict: Verdict,
}

/// A finished run: the report and the histograms behind it (for merging across rounds).
#[derive(Debug, Clone)]
pub struct LoadRun {
    /// The summary.
    pub report: LoadReport,
    /// The latency histogram behind `report.latency`.
    pub latency: LatencyHist,
    /// Per-bucket results, when asked for ([`run_timed`]).
    pub timeline: Vec<BucketSummary>,
    /// When the measurement window started, on the wall clock (for aligning it with events
    /// outside the generator, such as a flapping upstream's cycle).
    pub window_start: SystemTime,
}

/// Results per time bucket ([`crate::timeline`]), and where the window starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelineSpec {
    /// Bucket width.
    pub bucket: Duration,
    /// Start the measurement window at a whole multiple of this since the Unix epoch (wall
    /// clock), after the warm-up; `None` starts it as soon as the connections are up.
    pub align_to: Option<Duration>,
}

/// How long after `now` (wall clock, since the Unix epoch) the run must start so that its
/// measurement window, `warmup` after the start, begins on a whole multiple of `period`, with at
/// least `lead` to get going.
pub fn aligned_lead(now: Duration, lead: Duration, warmup: Duration, period: Duration) -> Duration {
    let period_ns = period.as_nanos();
    if period_ns == 0 {
        return lead;
    }
    let earliest = (now + lead + warmup).as_nanos();
    let aligned = earliest.div_ceil(period_ns) * period_ns;
    let wait = u64::try_from(aligned - earliest).unwrap_or(u64::MAX);
    lead + Duration::from_nanos(wait)
}

/// Hooks for the caller, called on the caller's thread: at the start and end of the measurement
/// window (to sample the target's CPU time) and every ~200 ms (to sample memory).
pub trait Monitor {
    /// The measurement window starts now.
    fn window_start(&mut self) {}
    /// The measurement window ends now.
    fn window_end(&mut self) {}
    /// Periodic tick during the run.
    fn tick(&mut self) {}
}

/// A monitor that does nothing.
#[derive(Debug)]
pub struct NoMonitor;
impl Monitor for NoMonitor {}

/// Why one request failed.
#[derive(Debug, Error)]
pub enum RequestError {
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(io::Error),
    /// The peer closed the connection before the response was complete.
    #[error("connection closed mid-response")]
    Closed,
    /// The response was malformed.
    #[error("framing: {0}")]
    Framing(#[from] FramingError),
    /// HTTP/2 error.
    #[error("h2: {0}")]
    H2(#[from] h2::Error),
    /// A non-2xx status.
    #[error("status {0}")]
    Status(u16),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// Runs `spec` and returns its result. Fails only when the generator cannot start (no
/// connection could be made, a thread could not be created); failures of individual requests
/// are counted in the result.
pub fn run(spec: &LoadSpec, monitor: &mut dyn Monitor) -> anyhow::Result<LoadRun> {
    run_timed(spec, monitor, None)
}

/// [`run`], also recording results per time bucket when `timeline` is set.
pub fn run_timed(
    spec: &LoadSpec,
    monitor: &mut dyn Monitor,
    timeline: Option<TimelineSpec>,
) -> anyhow::Result<LoadRun> {
    if spec.protocol != Protocol::Http1 && (spec.tls.is_some() || spec.new_connection_per_request) {
        anyhow::bail!("TLS and a connection per request are for HTTP/1.1 only");
    }
    let threads = spec.threads.clamp(1, spec.connections.max(1));
    let lanes_total = spec.lanes();
    let progress_counters: Vec<Arc<ThreadProgress>> = (0..threads)
        .map(|_| Arc::new(ThreadProgress::default()))
        .collect();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut start_txs = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for (t, progress) in progress_counters.iter().enumerate() {
        let (start_tx, start_rx) = mpsc::channel::<Option<Instant>>();
        start_txs.push(start_tx);
        let spec = spec.clone();
        let ready_tx = ready_tx.clone();
        let progress = progress.clone();
        let core = (!spec.cores.is_empty()).then(|| spec.cores[t % spec.cores.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || -> anyhow::Result<ThreadOutput> {
                if let Some(core) = core {
                    runtime::pin_current_thread(core);
                }
                let io = spec.io;
                let ctx = ThreadCtx {
                    spec,
                    timeline: timeline.map(|t| t.bucket),
                    index: t,
                    threads,
                    lanes_total,
                    progress,
                };
                Ok(runtime::block_on(io, thread_main(ctx, ready_tx, start_rx))?)
            })?;
        handles.push(handle);
    }
    drop(ready_tx);

    // All threads connected (or one failed): then start them together.
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv_timeout(spec.timeout * 4 + Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("generator threads did not get ready in time".to_owned()),
        }
        if failure.is_some() {
            break;
        }
    }
    let (now, wall_now) = (Instant::now(), SystemTime::now());
    let lead = Duration::from_millis(20);
    let lead = match timeline.and_then(|t| t.align_to) {
        Some(period) => match wall_now.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(since_epoch) => aligned_lead(since_epoch, lead, spec.warmup, period),
            Err(_) => lead,
        },
        None => lead,
    };
    let start = now + lead;
    let wall_window_start = wall_now + lead + spec.warmup;
    for tx in &start_txs {
        let _ = tx.send(failure.is_none().then_some(start));
    }
    let window_start = start + spec.warmup;
    let end = window_start + spec.duration;

    let mut bar = Progress::new(&spec.label, spec.warmup + spec.duration, spec.progress);
    let (mut started, mut ended) = (false, false);
    if failure.is_none() {
        const TICK: Duration = Duration::from_millis(200);
        loop {
            let now = Instant::now();
            if !started && now >= window_start {
                monitor.window_start();
                started = true;
            }
            if !ended && now >= end {
                monitor.window_end();
                ended = true;
            }
            if handles.iter().all(|h| h.is_finished()) {
                break;
            }
            monitor.tick();
            let completed = progress_counters
                .iter()
                .map(|p| p.completed.load(Ordering::Relaxed))
                .sum();
            let errors = progress_counters
                .iter()
                .map(|p| p.errors.load(Ordering::Relaxed))
                .sum();
            bar.update(now.saturating_duration_since(start), completed, errors);
            let mut next = now + TICK;
            if !started {
                next = next.min(window_start);
            }
            if !ended {
                next = next.min(end);
            }
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        if !started {
            monitor.window_start();
        }
        if !ended {
            monitor.window_end();
        }
    }
    bar.finish();

    let mut outputs = Vec::with_capacity(threads);
    for h in handles {
        match h.join() {
            Ok(Ok(out)) => outputs.push(out),
            Ok(Err(e)) => failure = failure.or(Some(format!("generator thread failed: {e:#}"))),
            Err(_) => failure = failure.or(Some("generator thread panicked".to_owned())),
        }
    }
    if let Some(e) = failure {
        anyhow::bail!("{e}");
    }

    let mut latency = LatencyHist::new();
    let mut uncorrected = LatencyHist::new();
    let mut lag = LatencyHist::new();
    let mut errors = ErrorCounts::default();
    let (mut completed, mut cpu) = (0u64, 0.0f64);
    let mut buckets: Option<Timeline> = None;
    for out in &outputs {
        match (&mut buckets, &out.stats.timeline) {
            (Some(all), Some(t)) => all.merge(t),
            (None, Some(t)) => buckets = Some(t.clone()),
            _ => {}
        }
        latency.merge(&out.stats.latency);
        uncorrected.merge(&out.stats.uncorrected);
        lag.merge(&out.stats.lag);
        errors.add(&out.stats.errors);
        completed += out.stats.completed;
        cpu += out.cpu_s;
    }
    let target_rate = match spec.mode {
        Mode::Open { rate } => Some(rate),
        Mode::Closed => None,
    };
    let scheduled = target_rate.map(|rate| {
        (0..lanes_total)
            .map(|i| {
                let schedule = if spec.align_lanes {
                    LaneSchedule::new(start, rate / lanes_total as f64, 1, 0)
                } else {
                    LaneSchedule::new(start, rate, lanes_total, i)
                };
                schedule.scheduled_between(window_start, end)
            })
            .sum()
    });
    let achieved = completed as f64 / spec.duration.as_secs_f64();
    let report = LoadReport {
        protocol: spec.protocol,
        mode: spec.mode,
        connections: spec.connections,
        lanes: lanes_total,
        threads,
        io: spec.io.resolve(),
        duration_s: spec.duration.as_secs_f64(),
        scheduled,
        completed,
        achieved_rate: achieved,
        errors,
        latency: latency.summary(),
        uncorrected: uncorrected.summary(),
        generator_lag: target_rate.and_then(|_| lag.summary()),
        curve: latency.curve(),
        generator_cpu_s: cpu,
        verdict: judge(target_rate, achieved, completed, errors.total()),
    };
    Ok(LoadRun {
        report,
        latency,
        timeline: buckets.map(|t| t.summary()).unwrap_or_default(),
        window_start: wall_window_start,
    })
}

/// Written by one generator thread, read by the caller for the progress bar.
#[derive(Debug, Default)]
struct ThreadProgress {
    completed: AtomicU64,
    errors: AtomicU64,
}

struct ThreadCtx {
    spec: LoadSpec,
    /// Bucket width of the timeline, if one is kept.
    timeline: Option<Duration>,
    index: usize,
    threads: usize,
    lanes_total: usize,
    progress: Arc<ThreadProgress>,
}

#[derive(Debug, Default)]
struct ThreadStats {
    latency: LatencyHist,
    uncorrected: LatencyHist,
    lag: LatencyHist,
    completed: u64,
    errors: ErrorCounts,
    /// Per-bucket results of the window, if asked for.
    timeline: Option<Timeline>,
    /// Responses and failures at any time (warm-up included), for progress.
    all_completed: u64,
    all_errors: u64,
}

struct ThreadOutput {
    stats: ThreadStats,
    cpu_s: f64,
}

async fn thread_main(
    ctx: ThreadCtx,
    ready: mpsc::Sender<Result<(), String>>,
    start: mpsc::Receiver<Option<Instant>>,
) -> ThreadOutput {
    let empty = ThreadOutput {
        stats: ThreadStats::default(),
        cpu_s: 0.0,
    };
    let lanes = match connect_lanes(&ctx).await {
        Ok(lanes) => lanes,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot connect to {}: {e}", ctx.spec.address)));
            return empty;
        }
    };
    let _ = ready.send(Ok(()));
    // Blocks this runtime for the few milliseconds until every thread is ready; nothing is in
    // flight yet.
    let Ok(Some(start)) = start.recv() else {
        return empty;
    };
    let window_start = start + ctx.spec.warmup;
    let end = window_start + ctx.spec.duration;
    let stats = Rc::new(RefCell::new(ThreadStats {
        timeline: ctx
            .timeline
            .map(|width| Timeline::new(window_start, width, ctx.spec.duration)),
        ..ThreadStats::default()
    }));

    let cpu = Rc::new(Cell::new(0.0));
    let meter = {
        let cpu = cpu.clone();
        monoio::spawn(async move {
            sleep_until_coarse(window_start).await;
            let before = sys::thread_cpu_seconds();
            sleep_until_coarse(end).await;
            cpu.set(sys::thread_cpu_seconds() - before);
        })
    };
    let mut tasks = Vec::with_capacity(lanes.len());
    for (global_index, lane) in lanes {
        let lane_ctx = LaneCtx {
            mode: ctx.spec.mode,
            schedule: match ctx.spec.mode {
                Mode::Open { rate } if ctx.spec.align_lanes => Some(LaneSchedule::new(
                    start,
                    rate / ctx.lanes_total as f64,
                    1,
                    0,
                )),
                Mode::Open { rate } => Some(LaneSchedule::new(
                    start,
                    rate,
                    ctx.lanes_total,
                    global_index,
                )),
                Mode::Closed => None,
            },
            start,
            window_start,
            end,
            timeout: ctx.spec.timeout,
            stats: stats.clone(),
            progress: ctx.progress.clone(),
        };
        tasks.push(monoio::spawn(lane_loop(lane, lane_ctx)));
    }
    for task in tasks {
        task.await;
    }
    meter.await;
    let stats = Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| std::mem::take(&mut *shared.borrow_mut()));
    ThreadOutput {
        stats,
        cpu_s: cpu.get(),
    }
}

async fn sleep_until_coarse(t: Instant) {
    let now = Instant::now();
    if t > now {
        monoio::time::sleep(t - now).await;
    }
}

/// This thread's lanes with their global indices (which fix their place in the schedule).
async fn connect_lanes(ctx: &ThreadCtx) -> Result<Vec<(usize, Lane)>, RequestError> {
    let spec = &ctx.spec;
    let per_conn = match spec.protocol {
        Protocol::H2 => spec.streams.max(1),
        _ => 1,
    };
    let mut lanes = Vec::new();
    for conn in (ctx.index..spec.connections).step_by(ctx.threads) {
        let first = conn * per_conn;
        match spec.protocol {
            Protocol::Http1 => {
                let mut lane = H1Lane::new(spec);
                lane.stream = Some(lane.connect().await?);
                lanes.push((first, Lane::H1(lane)));
            }
            Protocol::Echo => {
                let mut lane = EchoLane::new(spec);
                lane.stream = Some(connect(spec.address, spec.timeout).await?);
                lanes.push((first, Lane::Echo(lane)));
            }
            Protocol::H2 => {
                let conn = Rc::new(RefCell::new(H2Conn {
                    addr: spec.address,
                    timeout: spec.timeout,
                    client: None,
                    generation: 0,
                    connecting: false,
                }));
                H2Conn::reconnect(&conn).await?;
                for s in 0..per_conn {
                    lanes.push((first + s, Lane::H2(H2Lane::new(spec, conn.clone())?)));
                }
            }
        }
    }
    Ok(lanes)
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, RequestError> {
    let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(addr))
        .await
        .map_err(|_| RequestError::Connect(io::ErrorKind::TimedOut.into()))?
        .map_err(RequestError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

struct LaneCtx {
    mode: Mode,
    schedule: Option<LaneSchedule>,
    start: Instant,
    window_start: Instant,
    end: Instant,
    timeout: Duration,
    stats: Rc<RefCell<ThreadStats>>,
    progress: Arc<ThreadProgress>,
}

/// One lane: requests one after another, closed loop or on its schedule, until the run ends.
async fn lane_loop(mut lane: Lane, ctx: LaneCtx) {
    let mut timer = match ctx.mode {
        Mode::Open { .. } => match PreciseTimer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("generator: cannot create a timer: {e}");
                return;
            }
        },
        Mode::Closed => None,
    };
    let mut clock = LaneClock::new();
    let mut lane_free = ctx.start;
    let mut k = 0u64;
    let mut failed = false;
    loop {
        let intended = match (&ctx.schedule, timer.as_mut()) {
            (Some(schedule), Some(timer)) => {
                let intended = schedule.intended(k);
                if intended >= ctx.end || timer.sleep_until(intended).await.is_err() {
                    break;
                }
                intended
            }
            _ => Instant::now(),
        };
        k += 1;
        let sent = Instant::now();
        // A lane that fell behind stops at the end; its unsent requests count as not achieved.
        if sent >= ctx.end {
            break;
        }
        // After a failure the connection is rebuilt first; that time is the target's, part of
        // this request's service time.
        let result = if std::mem::take(&mut failed) {
            match lane.reconnect(ctx.timeout).await {
                Ok(()) => request(&mut lane, ctx.timeout).await,
                Err(e) => Err(e),
            }
        } else {
            request(&mut lane, ctx.timeout).await
        };
        let done = Instant::now();
        let timing = Timing {
            intended,
            lane_free,
            sent,
            done,
        };
        let corrected = clock.corrected(&timing);
        match result {
            Ok(()) => record_success(&ctx, &timing, corrected),
            Err(e) => {
                record_error(&ctx, intended, &e);
                // A non-2xx answer leaves the connection usable (`request` drops it when the
                // server said close); anything else leaves it in an unknown state.
                failed = !matches!(e, RequestError::Status(_));
                if matches!(e, RequestError::Connect(_)) {
                    // Do not spin against a target that refuses connections.
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        lane_free = Instant::now();
    }
}

async fn request(lane: &mut Lane, timeout: Duration) -> Result<(), RequestError> {
    monoio::time::timeout(timeout, lane.request())
        .await
        .unwrap_or(Err(RequestError::Timeout))
}

fn record_success(ctx: &LaneCtx, t: &Timing, corrected: Duration) {
    let mut s = ctx.stats.borrow_mut();
    s.all_completed += 1;
    ctx.progress
        .completed
        .store(s.all_completed, Ordering::Relaxed);
    if t.intended < ctx.window_start || t.intended >= ctx.end {
        return;
    }
    s.completed += 1;
    s.latency.record(corrected);
    if let Some(timeline) = s.timeline.as_mut() {
        timeline.record(t.intended, Some(corrected));
    }
    s.uncorrected.record(t.uncorrected());
    if ctx.schedule.is_some() {
        s.lag.record(t.generator_lag());
    }
}

fn record_error(ctx: &LaneCtx, intended: Instant, e: &RequestError) {
    let mut s = ctx.stats.borrow_mut();
    s.all_errors += 1;
    ctx.progress.errors.store(s.all_errors, Ordering::Relaxed);
    if intended >= ctx.window_start && intended < ctx.end {
        s.errors.count(e);
        if let Some(timeline) = s.timeline.as_mut() {
            timeline.record(intended, None);
        }
    }
}

/// A lane of one of the three protocols.
enum Lane {
    H1(H1Lane),
    H2(H2Lane),
    Echo(EchoLane),
}

impl Lane {
    async fn request(&mut self) -> Result<(), RequestError> {
        match self {
            Lane::H1(l) => l.request().await,
            Lane::H2(l) => l.request().await,
            Lane::Echo(l) => l.request().await,
        }
    }

    /// Restores the connection after a failure.
    async fn reconnect(&mut self, timeout: Duration) -> Result<(), RequestError> {
        match self {
            Lane::H1(l) => {
                l.stream = None;
                l.stream = Some(l.connect().await?);
                Ok(())
            }
            Lane::Echo(l) => {
                l.stream = None;
                l.stream = Some(connect(l.addr, timeout).await?);
                Ok(())
            }
            Lane::H2(l) => l.reconnect().await,
        }
    }
}

/// An HTTP/1.1 keep-alive connection (or one per request, see
/// [`LoadSpec::new_connection_per_request`]).
struct H1Lane {
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<ClientTls>,
    new_connection_per_request: bool,
    stream: Option<Conn>,
    /// The request, prebuilt; moved into each write and back.
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl H1Lane {
    fn new(spec: &LoadSpec) -> Self {
        let close = if spec.new_connection_per_request {
            "Connection: close\r\n"
        } else {
            ""
        };
        let mut request = if spec.request_body > 0 {
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\n{close}Content-Length: {}\r\n\r\n",
                spec.path, spec.host, spec.request_body
            )
            .into_bytes()
        } else {
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\n{close}\r\n",
                spec.path, spec.host
            )
            .into_bytes()
        };
        request.resize(request.len() + spec.request_body, b'r');
        Self {
            addr: spec.address,
            timeout: spec.timeout,
            // A resuming client gets a session cache per lane (see `ClientTls::resuming`).
            tls: spec
                .tls
                .as_ref()
                .map(|c| if c.resumes { c.resuming() } else { c.clone() }),
            new_connection_per_request: spec.new_connection_per_request,
            stream: None,
            request,
            buf: Vec::with_capacity(READ_BUF),
        }
    }

    /// A new connection, with a full TLS handshake when TLS is on.
    async fn connect(&self) -> Result<Conn, RequestError> {
        let tcp = connect(self.addr, self.timeout).await?;
        Ok(match &self.tls {
            None => Conn::Plain(tcp),
            Some(client) => Conn::Tls(Box::new(
                TlsConn::connect(tcp, client)
                    .await
                    .map_err(RequestError::Connect)?,
            )),
        })
    }

    async fn request(&mut self) -> Result<(), RequestError> {
        if self.new_connection_per_request {
            self.stream = None;
        }
        if self.stream.is_none() {
            // The server closed the previous response's connection (or every request gets a
            // new one): connecting is part of this request's time, as with any client.
            self.stream = Some(self.connect().await?);
        }
        let Self {
            stream,
            request,
            buf,
            new_connection_per_request,
            ..
        } = self;
        let Some(conn) = stream.as_mut() else {
            return Err(RequestError::Closed);
        };
        let (res, back) = conn.write_all(std::mem::take(request)).await;
        *request = back;
        res.map_err(RequestError::Io)?;

        buf.clear();
        let mut head: Option<http1::ResponseHead> = None;
        let mut body = BodyReader::new(http1::Framing::Empty);
        let mut parsed = 0;
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(READ_BUF);
            }
            let (res, back) = conn.read_append(std::mem::take(buf)).await;
            *buf = back;
            if res.map_err(RequestError::Io)? == 0 {
                return Err(RequestError::Closed);
            }
            if head.is_none() {
                match http1::parse_response(buf)? {
                    Some(h) => {
                        parsed = h.len;
                        body = BodyReader::new(h.framing);
                        head = Some(h);
                    }
                    None if buf.len() > MAX_HEAD => {
                        return Err(RequestError::Framing(FramingError::Head(
                            "response head too large".into(),
                        )));
                    }
                    None => continue,
                }
            }
            parsed += body.feed(&buf[parsed..])?;
            if body.is_done() {
                // One request in flight: anything after its response is the server's error.
                if parsed < buf.len() {
                    return Err(RequestError::Framing(FramingError::Head(
                        "bytes after the response".into(),
                    )));
                }
                break;
            }
            // Body bytes are counted, not kept: reuse the buffer for the rest.
            buf.clear();
            parsed = 0;
        }
        let Some(head) = head else {
            return Err(RequestError::Closed);
        };
        if head.close || *new_connection_per_request {
            *stream = None;
        }
        if !(200..300).contains(&head.status) {
            return Err(RequestError::Status(head.status));
        }
        Ok(())
    }
}

/// A TCP echo connection.
struct EchoLane {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    message: Vec<u8>,
    buf: Vec<u8>,
}

impl EchoLane {
    fn new(spec: &LoadSpec) -> Self {
        Self {
            addr: spec.address,
            stream: None,
            message: vec![b'e'; spec.payload.max(1)],
            buf: Vec::with_capacity(spec.payload.clamp(1, READ_BUF)),
        }
    }

    async fn request(&mut self) -> Result<(), RequestError> {
        let Some(conn) = self.stream.as_mut() else {
            return Err(RequestError::Closed);
        };
        let want = self.message.len();
        let (res, back) = conn.write_all(std::mem::take(&mut self.message)).await;
        self.message = back;
        res.map_err(RequestError::Io)?;
        let mut got = 0;
        while got < want {
            let (res, back) = conn.read(std::mem::take(&mut self.buf)).await;
            self.buf = back;
            match res.map_err(RequestError::Io)? {
                0 => return Err(RequestError::Closed),
                n => got += n,
            }
        }
        if got > want {
            return Err(RequestError::Framing(FramingError::Head(
                "echo returned more bytes than sent".into(),
            )));
        }
        Ok(())
    }
}

/// One HTTP/2 connection shared by its lanes.
struct H2Conn {
    addr: SocketAddr,
    timeout: Duration,
    /// The request handle and whether the connection task still runs.
    client: Option<(h2::client::SendRequest<Bytes>, Rc<Cell<bool>>)>,
    /// Bumped on every reconnect, so that lanes failing together reconnect once.
    generation: u64,
    connecting: bool,
}

impl H2Conn {
    async fn reconnect(this: &Rc<RefCell<H2Conn>>) -> Result<(), RequestError> {
        let (addr, timeout) = {
            let mut c = this.borrow_mut();
            c.connecting = true;
            c.client = None;
            (c.addr, c.timeout)
        };
        let result = async {
            let tcp = connect(addr, timeout).await?;
            let io = tcp.into_poll_io().map_err(RequestError::Connect)?;
            let handshake = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(16 << 20)
                .handshake::<_, Bytes>(io);
            let (send, connection) = monoio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| RequestError::Timeout)??;
            let alive = Rc::new(Cell::new(true));
            let flag = alive.clone();
            monoio::spawn(async move {
                let _ = connection.await;
                flag.set(false);
            });
            Ok::<_, RequestError>((send, alive))
        }
        .await;
        let mut c = this.borrow_mut();
        c.connecting = false;
        let client = result?;
        c.client = Some(client);
        c.generation += 1;
        Ok(())
    }
}

/// One stream slot on an HTTP/2 connection.
struct H2Lane {
    conn: Rc<RefCell<H2Conn>>,
    request: http::Request<()>,
    body: Bytes,
    seen_generation: u64,
}

impl H2Lane {
    fn new(spec: &LoadSpec, conn: Rc<RefCell<H2Conn>>) -> Result<Self, RequestError> {
        let uri = format!("http://{}{}", spec.host, spec.path);
        let request = http::Request::builder()
            .method(if spec.request_body > 0 { "POST" } else { "GET" })
            .uri(uri)
            .body(())
            .map_err(|e| RequestError::Framing(FramingError::Head(e.to_string())))?;
        let seen_generation = conn.borrow().generation;
        Ok(Self {
            conn,
            request,
            body: Bytes::from(vec![b'r'; spec.request_body]),
            seen_generation,
        })
    }

    async fn request(&mut self) -> Result<(), RequestError> {
        let send = {
            let c = self.conn.borrow();
            match &c.client {
                Some((send, alive)) if alive.get() => send.clone(),
                _ => return Err(RequestError::Closed),
            }
        };
        let mut send = send.ready().await?;
        let mut request = http::Request::new(());
        *request.method_mut() = self.request.method().clone();
        *request.uri_mut() = self.request.uri().clone();
        let (response, mut stream) = send.send_request(request, self.body.is_empty())?;
        if !self.body.is_empty() {
            stream.send_data(self.body.clone(), true)?;
        }
        let response = response.await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        if !(200..300).contains(&status) {
            return Err(RequestError::Status(status));
        }
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<(), RequestError> {
        let (generation, healthy, connecting) = {
            let c = self.conn.borrow();
            let healthy = c.client.as_ref().is_some_and(|(_, alive)| alive.get());
            (c.generation, healthy, c.connecting)
        };
        if generation != self.seen_generation || healthy {
            // Another lane reconnected already, or only this stream failed.
            self.seen_generation = generation;
            return Ok(());
        }
        if connecting {
            monoio::time::sleep(Duration::from_millis(5)).await;
            return Ok(());
        }
        H2Conn::reconnect(&self.conn).await?;
        self.seen_generation = self.conn.borrow().generation;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(judge(Some(1000.0), 995.0, 9950, 0), Verdict::Valid);
        assert_eq!(
            judge(Some(1000.0), 900.0, 9000, 0),
            Verdict::RateShortfall {
                achieved: 900.0,
                target: 1000.0
            }
        );
        // Closed loop has no target rate.
        assert_eq!(judge(None, 5.0, 50, 0), Verdict::Valid);
        assert_eq!(
            judge(Some(1000.0), 1000.0, 10_000, 500),
            Verdict::Errors {
                errors: 500,
                completed: 10_000
            }
        );
        assert_eq!(judge(Some(1000.0), 0.0, 0, 0), Verdict::NoResponses);
        assert!(
            Verdict::RateShortfall {
                achieved: 900.0,
                target: 1000.0
            }
            .describe()
            .contains("latency not reported")
        );
    }

    #[test]
    fn aligned_lead_starts_the_window_on_a_cycle_boundary() {
        let ms = Duration::from_millis;
        let period = ms(5000);
        // 12.3 s after the epoch, 20 ms lead, 1 s warm-up: the window can start at 13.32 s at the
        // earliest, so it starts at 15 s, i.e. the run starts at 14 s, 1.7 s from now.
        let lead = aligned_lead(ms(12_300), ms(20), ms(1000), period);
        assert_eq!(lead, ms(1700));
        assert_eq!(
            (ms(12_300) + lead + ms(1000)).as_nanos() % period.as_nanos(),
            0
        );
        // Exactly on a boundary already: no extra wait.
        assert_eq!(aligned_lead(ms(3980), ms(20), ms(1000), period), ms(20));
        // No period: just the lead.
        assert_eq!(aligned_lead(ms(1), ms(20), ms(0), Duration::ZERO), ms(20));
    }

    #[test]
    fn h1_requests_are_well_formed() {
        let mut spec = test_spec(Protocol::Http1, "127.0.0.1:1".parse().expect("addr"));
        let lane = H1Lane::new(&spec);
        assert_eq!(
            lane.request,
            b"GET /payload/64 HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec()
        );
        spec.request_body = 3;
        let lane = H1Lane::new(&spec);
        assert_eq!(
            lane.request,
            b"POST /payload/64 HTTP/1.1\r\nHost: bench\r\nContent-Length: 3\r\n\r\nrrr".to_vec()
        );
    }

    pub(crate) fn test_spec(protocol: Protocol, address: SocketAddr) -> LoadSpec {
        LoadSpec {
            protocol,
            address,
            host: "bench".into(),
            path: "/payload/64".into(),
            request_body: 0,
            payload: 64,
            connections: 4,
            streams: 4,
            mode: Mode::Closed,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
            threads: 1,
            cores: vec![],
            io: Io::Auto,
            timeout: Duration::from_secs(2),
            label: "test".into(),
            progress: false,
            align_lanes: false,
            tls: None,
            new_connection_per_request: false,
        }
    }
}
