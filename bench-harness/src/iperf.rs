//! The L4 bulk scenario: iperf3 through direct, ringmesh, HAProxy (`mode tcp`) and nginx
//! (`stream`, when its module is installed), with 1 and 4 parallel streams.
//!
//! The iperf3 server and client run on the load cores, the proxy on its own. Reported per target:
//! Gbit/s received and proxy CPU seconds per GB moved (a proxy that reaches the same throughput
//! with less CPU leaves more for everything else on the node).

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::compare::{CompareSpec, log, rotation};
use crate::report::{IperfReport, IperfRow, TargetStatus};
use crate::stats::Spread;
use crate::sys;
use crate::targets::{self, Front, TargetKind};

/// One round's outcome for a target: Gbit/s, proxy CPU s/GB, proxy CPU share; or why it failed.
type RoundOutcome = Result<(f64, Option<f64>, Option<f64>), String>;

/// One iperf3 client run's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Bits per second received.
    pub bits_per_second: f64,
    /// Bytes received.
    pub bytes: f64,
}

/// Reads `end.sum_received` from iperf3's `-J` output.
pub fn parse_iperf_json(text: &str) -> Result<IperfResult, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(error) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {error}"));
    }
    let sum = v
        .pointer("/end/sum_received")
        .ok_or("iperf3 JSON has no end.sum_received")?;
    let get = |k: &str| sum.get(k).and_then(|x| x.as_f64());
    match (get("bits_per_second"), get("bytes")) {
        (Some(bits_per_second), Some(bytes)) => Ok(IperfResult {
            bits_per_second,
            bytes,
        }),
        _ => Err("iperf3 JSON lacks bits_per_second/bytes".into()),
    }
}

/// Whether something listens on 127.0.0.1:`port` (from `/proc/net/tcp`; connecting to an iperf3
/// server to find out would start a test).
pub fn is_listening(port: u16) -> bool {
    let needle = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| a.ends_with(&needle)) && f.get(3) == Some(&"0A")
        })
    })
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        sys::stop_tree(&mut self.child, Duration::from_secs(2));
    }
}

fn start_server(iperf3: &Path, cores: &[usize]) -> Result<Server, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = sys::free_port().map_err(|e| e.to_string())?;
        let mut child = sys::pinned_command(iperf3, cores)
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start iperf3: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if is_listening(port) {
                return Ok(Server { child, port });
            }
            if let Ok(Some(status)) = child.try_wait() {
                last = format!("iperf3 server exited: {status}");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        if last.is_empty() {
            last = "iperf3 server did not listen".into();
        }
    }
    Err(last)
}

fn client(
    iperf3: &Path,
    cores: &[usize],
    port: u16,
    streams: usize,
    duration: Duration,
) -> Result<IperfResult, String> {
    let mut last = String::new();
    // The server takes a moment after a test before it accepts the next one.
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        let out = sys::pinned_command(iperf3, cores)
            .args(["-c", "127.0.0.1", "-J", "-p", &port.to_string()])
            // A proxy that accepts but never connects upstream must not hang the comparison.
            .args(["--connect-timeout", "3000"])
            .args(["-P", &streams.to_string()])
            .args(["-t", &format!("{}", duration.as_secs().max(1))])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run iperf3: {e}"))?;
        match parse_iperf_json(&String::from_utf8_lossy(&out.stdout)) {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Runs the iperf3 scenario for the L4-capable targets of `spec`.
pub fn run(spec: &CompareSpec, warnings: &mut Vec<String>) -> IperfReport {
    let kinds: Vec<TargetKind> = spec.targets.clone();
    let mut status: Vec<TargetStatus> = kinds
        .iter()
        .map(|&kind| TargetStatus {
            kind,
            skipped: None,
            version: String::new(),
            detail: None,
            tls: None,
        })
        .collect();
    let mut report = IperfReport {
        targets: Vec::new(),
        duration_s: spec.iperf_duration.as_secs_f64(),
        rows: Vec::new(),
        version: String::new(),
    };
    let Some(iperf3) = sys::which("iperf3") else {
        for s in &mut status {
            s.skipped = Some("iperf3 not installed (apt-get install iperf3)".into());
        }
        warnings.push("iperf3: not installed; the L4 bulk scenario did not run.".into());
        report.targets = status;
        return report;
    };
    report.version = std::process::Command::new(&iperf3)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let server = match start_server(&iperf3, &spec.load_cores) {
        Ok(s) => s,
        Err(e) => {
            for s in &mut status {
                s.skipped = Some(e.clone());
            }
            warnings.push(format!("iperf3: {e}"));
            report.targets = status;
            return report;
        }
    };
    let server_addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
    // (kind, streams) -> per-round (gbps, cpu per GB, util)
    let mut results: Vec<(TargetKind, usize, RoundOutcome)> = Vec::new();
    let rounds = spec.rounds.max(1);
    for round in 0..rounds {
        for kind in rotation(&kinds, round) {
            let Some(st) = status.iter_mut().find(|s| s.kind == kind) else {
                continue;
            };
            if st.skipped.is_some() {
                continue;
            }
            let mut target = match targets::start(
                kind,
                Front::Tcp,
                server_addr,
                &spec.targets_settings,
                &format!("iperf-{round}"),
                false,
            ) {
                Ok(t) => t,
                Err(reason) => {
                    log(&format!("iperf3: {kind} skipped: {reason}"));
                    st.skipped = Some(reason);
                    continue;
                }
            };
            st.version = target.version.clone();
            st.detail = target.detail.clone();
            for &streams in &spec.iperf_streams {
                let pid = target.pid();
                let cpu0 = pid.map(sys::tree_cpu_seconds);
                let t0 = Instant::now();
                let result = client(
                    &iperf3,
                    &spec.load_cores,
                    target.address.port(),
                    streams,
                    spec.iperf_duration,
                );
                let wall = t0.elapsed().as_secs_f64();
                let cpu = match (cpu0, pid.map(sys::tree_cpu_seconds)) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                };
                let outcome = result.map(|r| {
                    let gbps = r.bits_per_second / 1e9;
                    let per_gb = cpu.filter(|_| r.bytes > 0.0).map(|c| c / (r.bytes / 1e9));
                    let util = cpu.map(|c| c / wall / spec.proxy_cores.len().max(1) as f64);
                    (gbps, per_gb, util)
                });
                log(&format!(
                    "iperf3 r{}/{rounds} {kind} -P {streams}: {}",
                    round + 1,
                    match &outcome {
                        Ok((g, c, _)) => format!(
                            "{g:.2} Gbit/s, proxy CPU {} s/GB",
                            c.map_or("—".into(), |c| format!("{c:.3}"))
                        ),
                        Err(e) => format!("failed: {e}"),
                    }
                ));
                results.push((kind, streams, outcome));
            }
            target.stop();
        }
    }
    drop(server);
    for &kind in &kinds {
        for &streams in &spec.iperf_streams {
            let mine: Vec<&RoundOutcome> = results
                .iter()
                .filter(|(k, s, _)| *k == kind && *s == streams)
                .map(|(_, _, r)| r)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let ok: Vec<&(f64, Option<f64>, Option<f64>)> =
                mine.iter().filter_map(|r| r.as_ref().ok()).collect();
            report.rows.push(IperfRow {
                kind,
                streams,
                gbps: Spread::of(&ok.iter().map(|r| r.0).collect::<Vec<_>>()),
                cpu_s_per_gb: Spread::of(&ok.iter().filter_map(|r| r.1).collect::<Vec<_>>()),
                proxy_util: Spread::of(&ok.iter().filter_map(|r| r.2).collect::<Vec<_>>()),
                failures: mine
                    .iter()
                    .filter_map(|r| r.as_ref().err().cloned())
                    .collect(),
            });
        }
    }
    report.targets = status;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_json() {
        let text =
            r#"{"start":{},"end":{"sum_received":{"bytes":2500000000,"bits_per_second":1.0e10}}}"#;
        assert_eq!(
            parse_iperf_json(text),
            Ok(IperfResult {
                bits_per_second: 1.0e10,
                bytes: 2.5e9
            })
        );
        assert!(
            parse_iperf_json(r#"{"error":"the server is busy running a test"}"#)
                .is_err_and(|e| e.contains("busy"))
        );
        assert!(parse_iperf_json("not json").is_err());
    }

    #[test]
    fn listening_sockets_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(is_listening(port));
        drop(l);
        assert!(!is_listening(port));
    }
}
