//! What the harness reads from the operating system: CPU time and memory of process trees, per-core
//! utilisation, the machine's description, and child processes it starts and stops.
//!
//! CPU time is `utime + stime` from `/proc/PID/stat`, summed over the process and its descendants
//! (nginx and HAProxy may run worker processes; a master's `cutime` only counts workers after they
//! exit). It is in clock ticks (1/100 s on Linux), so runs of a few seconds already resolve it to
//! about 1 %.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc` times.
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .map_or(100.0, |t| t as f64)
}

/// The fields of `/proc/PID/stat` after the command name, which may itself contain spaces and
/// parentheses (so split after the *last* `)`).
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let close = text.rfind(')')?;
    Some(text.get(close + 1..)?.split_whitespace().collect())
}

/// `(ppid, utime + stime in ticks)` from the text of a `/proc/PID/stat` file.
pub fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let f = stat_fields(text)?;
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn read_stat(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid` and all its descendants alive now.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = read_stat(child) {
                children.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

/// CPU seconds (user + system) used so far by `pid` and its live descendants.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let ticks: u64 = process_tree(pid)
        .iter()
        .filter_map(|&p| read_stat(p).map(|(_, t)| t))
        .sum();
    ticks as f64 / clock_ticks()
}

/// A `kB` field (`VmRSS`, `VmHWM`) of a `/proc/PID/status` text, in bytes.
pub fn parse_status_kb(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Resident memory of `pid` and its descendants now, in bytes.
pub fn tree_rss_bytes(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| {
            parse_status_kb(
                &fs::read_to_string(format!("/proc/{p}/status")).ok()?,
                "VmRSS",
            )
        })
        .sum()
}

/// On-CPU time of the calling thread in seconds (`/proc/thread-self/schedstat`, nanoseconds;
/// falls back to the tick counts of `/proc/thread-self/stat`).
pub fn thread_cpu_seconds() -> f64 {
    if let Ok(text) = fs::read_to_string("/proc/thread-self/schedstat")
        && let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<u64>().ok())
    {
        return ns as f64 / 1e9;
    }
    fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0.0, |(_, ticks)| ticks as f64 / clock_ticks())
}

/// Busy and total ticks per core, from `/proc/stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreTimes(pub HashMap<usize, (u64, u64)>);

impl CoreTimes {
    /// Reads `/proc/stat` now.
    pub fn now() -> Self {
        Self::parse(&fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// Parses the `cpuN` lines of a `/proc/stat` text. Busy = total − idle − iowait.
    pub fn parse(text: &str) -> Self {
        let mut cores = HashMap::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let Some(core) = parts
                .next()
                .and_then(|name| name.strip_prefix("cpu"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let values: Vec<u64> = parts.filter_map(|v| v.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest time is already in user).
            let total: u64 = values.iter().take(8).sum();
            let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
            cores.insert(core, (total.saturating_sub(idle), total));
        }
        Self(cores)
    }

    /// Fraction (0–1) of the time `cores` were busy between `earlier` and `self`, averaged.
    pub fn busy_since(&self, earlier: &CoreTimes, cores: &[usize]) -> Option<f64> {
        let (mut busy, mut total) = (0u64, 0u64);
        for core in cores {
            let (b1, t1) = self.0.get(core)?;
            let (b0, t0) = earlier.0.get(core)?;
            busy += b1.saturating_sub(*b0);
            total += t1.saturating_sub(*t0);
        }
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// Cores online.
    pub cores: usize,
    /// CPU model name.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Load average (1 min) when the run started: a busy machine gives noisy numbers.
    pub loadavg_at_start: f64,
}

impl Machine {
    /// Describes this machine.
    pub fn detect() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = parse_status_kb(&meminfo, "MemTotal").unwrap_or(0);
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            memory_gib: memory as f64 / (1u64 << 30) as f64,
            loadavg_at_start: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

/// A UTC timestamp `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The current git commit (`abc1234`, with `-dirty` for uncommitted changes), if in a checkout.
pub fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str("-dirty");
    }
    Some(commit)
}

/// Finds an executable by name on `PATH` and in the sbin directories (nginx and haproxy live in
/// `/usr/sbin`, which is not on every user's `PATH`). A name with a `/` is taken as a path.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1, for peers that cannot report the port they bound (nginx,
/// HAProxy, iperf3). Another process could take it before the peer binds; starting a peer is
/// retried with a new port when that happens.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Builds a command pinned to `cores` with `taskset` (so every thread and child process it
/// creates inherits the affinity), or unpinned when `cores` is empty.
pub fn pinned_command(program: &Path, cores: &[usize]) -> Command {
    if cores.is_empty() {
        return Command::new(program);
    }
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core_list(cores)).arg(program);
    cmd
}

/// `0,2,3` for taskset and reports.
pub fn core_list(cores: &[usize]) -> String {
    cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `0,2-3` into `[0, 2, 3]`.
pub fn parse_core_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("invalid core list {text:?} (expected e.g. 0,2-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 1024 {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(cores)
}

/// Stops a child and its descendants: SIGTERM (graceful for nginx, HAProxy and ringmesh), then
/// SIGKILL to whatever is left after `grace`. Only processes this harness started are signalled.
pub fn stop_tree(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let tree = process_tree(pid);
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    // Workers that outlived their master (nginx workers after a SIGKILL) are ours too.
    for &p in tree.iter().skip(1) {
        if Path::new(&format!("/proc/{p}")).exists() {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let text = "1234 (nginx: worker) process)) S 1000 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 3 4 20 0 1 0 100 1000 200";
        assert_eq!(parse_stat(text), Some((1000, 325)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_measurable() {
        let me = std::process::id();
        assert!(process_tree(me).contains(&me));
        assert!(tree_rss_bytes(me) > 0);
        // Burn a little CPU so the counters are non-zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_seconds() > 0.0);
        assert!(tree_cpu_seconds(me) >= 0.0);
    }

    #[test]
    fn proc_stat_core_lines() {
        let text = "cpu  10 0 10 80 0 0 0 0 0 0\n\
                    cpu0 5 0 5 40 0 0 0 0 0 0\n\
                    cpu1 5 0 5 30 10 0 0 0 0 0\n\
                    intr 1 2 3\n";
        let t0 = CoreTimes::parse(text);
        assert_eq!(t0.0.get(&0), Some(&(10, 50)));
        assert_eq!(t0.0.get(&1), Some(&(10, 50)));
        let t1 = CoreTimes::parse("cpu0 55 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 80 10 0 0 0 0 0\n");
        assert_eq!(t1.busy_since(&t0, &[0]), Some(1.0));
        assert_eq!(t1.busy_since(&t0, &[1]), Some(0.0));
        assert_eq!(t1.busy_since(&t0, &[0, 1]), Some(0.5));
        assert_eq!(t1.busy_since(&t0, &[7]), None);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tnginx\nVmHWM:\t   2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_kb(text, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(utc_timestamp(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31 23:59:59
        assert_eq!(utc_timestamp(t), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn core_lists() {
        assert_eq!(parse_core_list("0"), Ok(vec![0]));
        assert_eq!(parse_core_list("0,2-4"), Ok(vec![0, 2, 3, 4]));
        assert_eq!(parse_core_list(""), Ok(vec![]));
        assert!(parse_core_list("a").is_err());
        assert!(parse_core_list("3-1").is_err());
        assert_eq!(core_list(&[1, 3]), "1,3");
    }
}
