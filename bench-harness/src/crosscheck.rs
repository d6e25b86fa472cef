//! Cross-check of the open-loop generator against `h2load --rps` on the direct target.
//!
//! At a modest rate neither tool should be the bottleneck, so both should see the upstream's
//! service time. h2load reports latency from when it issued each request (no coordinated-
//! omission correction) and, with `--log-file`, writes every request's time, from which the same
//! percentiles are computed here. Ours is compared both ways: as reported (corrected) and from
//! the actual send (like for like); at a modest rate they should barely differ.
//!
//! The judged comparison uses one connection: `h2load --rps` with several clients starts all
//! their timers at once, so requests leave in synchronised bursts (16 clients at 125 req/s each
//! send 16 requests together every 8 ms) and wait behind each other, while this generator
//! spreads its lanes evenly. The many-connection case is shown too, with our lanes aligned the
//! same way, to show that the difference is the arrival pattern and not the measurement.
//!
//! Agreement means p50 and p90 within 25 % or 25 µs of h2load's, whichever is looser. p99 and
//! beyond are printed but not judged: on a shared 2-core machine a few scheduler hiccups move
//! them by more than any tool difference.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::hist::{LatencyHist, Percentiles};
use crate::load::{self, LoadSpec, Mode, NoMonitor, Protocol};
use crate::report::{CrossCase, CrossCheck};
use crate::runtime::Io;
use crate::sys;

/// Relative tolerance for p50/p90 agreement.
pub const REL_TOLERANCE: f64 = 0.25;
/// Absolute tolerance for p50/p90 agreement, µs.
pub const ABS_TOLERANCE_US: f64 = 25.0;

/// Parses h2load's `--log-file` (start µs, status, duration µs per line) into a histogram of the
/// successful requests.
pub fn parse_h2load_log(text: &str) -> LatencyHist {
    let mut h = LatencyHist::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (_start, status, us) = (f.next(), f.next(), f.next());
        let ok = status
            .and_then(|s| s.trim().parse::<i32>().ok())
            .is_some_and(|s| (200..300).contains(&s));
        if let (true, Some(us)) = (ok, us.and_then(|u| u.trim().parse::<u64>().ok())) {
            h.record(Duration::from_micros(us));
        }
    }
    h
}

/// Whether `ours` agrees with `theirs` at p50 and p90.
pub fn agrees(ours: &Percentiles, theirs: &Percentiles) -> bool {
    let close = |a: f64, b: f64| (a - b).abs() <= (REL_TOLERANCE * b).max(ABS_TOLERANCE_US);
    close(ours.p50_us, theirs.p50_us) && close(ours.p90_us, theirs.p90_us)
}

fn ours(
    addr: SocketAddr,
    rate: f64,
    connections: usize,
    aligned: bool,
    duration: Duration,
    cores: &[usize],
    io: Io,
) -> Result<load::LoadReport, String> {
    let spec = LoadSpec {
        protocol: Protocol::Http1,
        address: addr,
        host: "bench.local".into(),
        path: PATH.into(),
        request_body: 0,
        payload: 1024,
        connections,
        streams: 1,
        mode: Mode::Open { rate },
        duration,
        warmup: Duration::from_secs(1),
        threads: 1,
        cores: cores.to_vec(),
        io,
        timeout: Duration::from_secs(5),
        label: "crosscheck".into(),
        progress: false,
        align_lanes: aligned,
        tls: None,
        new_connection_per_request: false,
    };
    load::run(&spec, &mut NoMonitor)
        .map(|r| r.report)
        .map_err(|e| format!("{e:#}"))
}

/// Runs h2load with `clients` clients sharing `rate`; returns its histogram of successful
/// requests.
fn h2load(
    binary: &Path,
    addr: SocketAddr,
    rate: f64,
    clients: usize,
    duration: Duration,
    cores: &[usize],
) -> Result<LatencyHist, String> {
    let log = std::env::temp_dir().join(format!(
        "ringmesh-bench-h2load-{}-{clients}.log",
        std::process::id()
    ));
    // h2load appends to its log file.
    let _ = std::fs::remove_file(&log);
    let out = sys::pinned_command(binary, cores)
        .arg("--h1")
        .args(["-c", &clients.to_string(), "-t", "1"])
        .arg(format!("--rps={}", rate / clients.max(1) as f64))
        .arg(format!("--duration={}", duration.as_secs().max(1)))
        .arg("--warm-up-time=1")
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{addr}{PATH}"))
        .stdin(Stdio::null())
        .output();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    match out {
        Ok(o) if o.status.success() => Ok(parse_h2load_log(&text)),
        Ok(o) => Err(format!(
            "h2load failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run h2load: {e}")),
    }
}

const PATH: &str = "/payload/1024";

/// Runs both tools against `addr` at `rate`: over one connection (judged: both send evenly
/// spaced requests), and over `connections` connections (explains the difference h2load's
/// synchronised clients make).
pub fn run(
    addr: SocketAddr,
    rate: f64,
    connections: usize,
    duration: Duration,
    cores: &[usize],
    io: Io,
) -> CrossCheck {
    let mut check = CrossCheck {
        rate,
        duration_s: duration.as_secs_f64(),
        cases: Vec::new(),
        agrees: None,
        note: String::new(),
    };
    let Some(binary) = sys::which("h2load") else {
        check.note = "h2load not installed (apt-get install nghttp2-client): not compared".into();
        return check;
    };
    let secs = duration.as_secs_f64();
    let mut failures = Vec::new();
    let plans = [
        ("1 connection".to_owned(), 1, false, true),
        (
            format!("{connections} connections"),
            connections,
            false,
            false,
        ),
        (
            format!("{connections} connections, our lanes aligned like h2load's clients"),
            connections,
            true,
            false,
        ),
    ];
    let mut theirs_by_clients: Vec<(usize, Option<LatencyHist>)> = Vec::new();
    for (name, conns, aligned, judged) in plans {
        let mine = ours(addr, rate, conns, aligned, duration, cores, io);
        if !theirs_by_clients.iter().any(|(c, _)| *c == conns) {
            let theirs = h2load(&binary, addr, rate, conns, duration, cores);
            if let Err(e) = &theirs {
                failures.push(e.clone());
            }
            theirs_by_clients.push((conns, theirs.ok()));
        }
        let theirs = theirs_by_clients
            .iter()
            .find(|(c, _)| *c == conns)
            .and_then(|(_, h)| h.as_ref());
        let mine = match mine {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("our generator: {e}"));
                continue;
            }
        };
        let h2 = theirs.and_then(LatencyHist::summary);
        let agrees = match (&mine.latency, &mine.uncorrected, &h2) {
            (Some(c), Some(u), Some(t)) => Some(agrees(c, t) && agrees(u, t)),
            _ => None,
        };
        check.cases.push(CrossCase {
            name,
            connections: conns,
            aligned,
            judged,
            ours_corrected: mine.latency,
            ours_uncorrected: mine.uncorrected,
            ours_rate: mine.achieved_rate,
            h2load: h2,
            h2load_rate: theirs.map(|h| h.count() as f64 / secs),
            agrees,
        });
    }
    check.agrees = check.cases.iter().find(|c| c.judged).and_then(|c| c.agrees);
    let many = check.cases.iter().find(|c| !c.judged && !c.aligned);
    let aligned = check.cases.iter().find(|c| c.aligned);
    let mut note = match check.agrees {
        Some(true) => format!(
            "Agree: over one connection at {rate:.0} req/s both tools send evenly spaced requests \
             and see the same latency (p50 and p90 within {:.0} % or {ABS_TOLERANCE_US:.0} µs).",
            REL_TOLERANCE * 100.0
        ),
        Some(false) => format!(
            "Disagree over one connection at {rate:.0} req/s (tolerance: p50 and p90 within \
             {:.0} % or {ABS_TOLERANCE_US:.0} µs); on a busy machine rerun before drawing conclusions.",
            REL_TOLERANCE * 100.0
        ),
        None => "Not compared.".to_owned(),
    };
    if let (Some(many), Some(aligned)) = (many, aligned)
        && let (Some(t), Some(o), Some(a)) =
            (&many.h2load, &many.ours_corrected, &aligned.ours_corrected)
    {
        note.push_str(&format!(
            " Over {connections} connections h2load reports p50 {:.0} µs against our {:.0} µs: h2load \
             starts every client's --rps timer at the same instant, so its requests leave in bursts \
             of {connections} and queue behind each other, while this generator spreads its lanes \
             evenly over each interval. With our lanes aligned the same way we measure p50 {:.0} µs, \
             so the difference is the arrival pattern, not the measurement.",
            t.p50_us, o.p50_us, a.p50_us
        ));
    }
    if !failures.is_empty() {
        note.push_str(&format!(" Failures: {}.", failures.join("; ")));
    }
    check.note = note;
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_log_lines() {
        let text = "1700000000000000\t200\t50\n1700000000000100\t200\t70\n\
                    1700000000000200\t-1\t5000\n1700000000000300\t503\t10\ngarbage\n";
        let h = parse_h2load_log(text);
        assert_eq!(h.count(), 2);
        let s = h.summary().expect("two samples");
        assert!((s.max_us - 70.0).abs() < 0.1);
    }

    fn p(p50: f64, p90: f64) -> Percentiles {
        Percentiles {
            count: 100,
            min_us: 1.0,
            mean_us: p50,
            p50_us: p50,
            p90_us: p90,
            p99_us: p90 * 2.0,
            p999_us: p90 * 3.0,
            max_us: p90 * 4.0,
        }
    }

    #[test]
    fn agreement_tolerance() {
        assert!(agrees(&p(40.0, 60.0), &p(50.0, 70.0)), "within 25 µs");
        assert!(agrees(&p(400.0, 600.0), &p(480.0, 700.0)), "within 25 %");
        assert!(
            !agrees(&p(400.0, 600.0), &p(600.0, 700.0)),
            "p50 off by 33 %"
        );
        assert!(!agrees(&p(40.0, 200.0), &p(50.0, 70.0)), "p90 off");
    }
}
