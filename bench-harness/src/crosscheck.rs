//! Cross-check of the open-loop generator against `h2load --rps` on the direct target.
//!
//! At a modest rate neither tool should be the bottleneck, so both should see the upstream's
//! service time. h2load reports latency from when it issued each request (no coordinated-
//! omission correction) and, with `--log-file`, writes every request's time, from which the same
//! percentiles are computed here. Ours is compared both ways: uncorrected (like for like) and
//! corrected (what the comparison reports; at a modest rate it should barely differ).
//!
//! Agreement means p50 and p90 within 25 % or 25 µs of h2load's, whichever is looser. p99 and
//! beyond are printed but not judged: on a shared 2-core machine a few scheduler hiccups move
//! them by more than any tool difference.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::hist::{LatencyHist, Percentiles};
use crate::load::{self, LoadSpec, Mode, NoMonitor, Protocol};
use crate::report::CrossCheck;
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

/// Runs both tools against `addr` at `rate` over `connections`.
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
        connections,
        duration_s: duration.as_secs_f64(),
        ours_corrected: None,
        ours_uncorrected: None,
        ours_rate: 0.0,
        h2load: None,
        h2load_rate: None,
        agrees: None,
        note: String::new(),
    };
    let path = "/payload/1024";
    let spec = LoadSpec {
        protocol: Protocol::Http1,
        address: addr,
        host: "bench.local".into(),
        path: path.into(),
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
        label: "crosscheck ours".into(),
        progress: false,
    };
    match load::run(&spec, &mut NoMonitor) {
        Ok(run) => {
            check.ours_corrected = run.report.latency;
            check.ours_uncorrected = run.report.uncorrected;
            check.ours_rate = run.report.achieved_rate;
        }
        Err(e) => {
            check.note = format!("our generator failed: {e:#}");
            return check;
        }
    }
    let Some(h2load) = sys::which("h2load") else {
        check.note = "h2load not installed (apt-get install nghttp2-client): not compared".into();
        return check;
    };
    let log =
        std::env::temp_dir().join(format!("ringmesh-bench-h2load-{}.log", std::process::id()));
    let per_client = rate / connections.max(1) as f64;
    let out = sys::pinned_command(&h2load, cores)
        .arg("--h1")
        .args(["-c", &connections.to_string(), "-t", "1"])
        .arg(format!("--rps={per_client}"))
        .arg(format!("--duration={}", duration.as_secs().max(1)))
        .arg("--warm-up-time=1")
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{addr}{path}"))
        .stdin(Stdio::null())
        .output();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            check.note = format!(
                "h2load failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return check;
        }
        Err(e) => {
            check.note = format!("cannot run h2load: {e}");
            return check;
        }
    }
    let theirs = parse_h2load_log(&text);
    check.h2load_rate = Some(theirs.count() as f64 / duration.as_secs_f64());
    check.h2load = theirs.summary();
    let (Some(ours), Some(corrected), Some(theirs)) =
        (check.ours_uncorrected, check.ours_corrected, check.h2load)
    else {
        check.note = "one of the tools recorded no successful request".into();
        return check;
    };
    let ok = agrees(&ours, &theirs) && agrees(&corrected, &theirs);
    check.agrees = Some(ok);
    check.note = format!(
        "{} at {rate:.0} req/s over {connections} connections, direct: p50/p90/p99 ours \
         corrected {:.0}/{:.0}/{:.0} µs, uncorrected {:.0}/{:.0}/{:.0} µs; h2load {:.0}/{:.0}/{:.0} µs \
         (tolerance: p50 and p90 within {:.0} % or {ABS_TOLERANCE_US:.0} µs).{}",
        if ok { "Agree" } else { "Disagree" },
        corrected.p50_us,
        corrected.p90_us,
        corrected.p99_us,
        ours.p50_us,
        ours.p90_us,
        ours.p99_us,
        theirs.p50_us,
        theirs.p90_us,
        theirs.p99_us,
        REL_TOLERANCE * 100.0,
        if ok {
            ""
        } else {
            " h2load sends each client's requests from a libev timer and times them from \
             submission inside its event loop; see BENCHMARKS.md for how to read a difference."
        }
    );
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
