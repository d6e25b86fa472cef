//! The Markdown rendering of a comparison: what `compare` prints and writes to `report.md`, and
//! what goes into `BENCHMARKS.md`.

use std::fmt::Write;

use super::{
    Better, CompareReport, IperfReport, LatencySummary, RatioRow, ScenarioReport, TargetStatus,
    fmt_median, fmt_rate, fmt_spread, fmt_us,
};
use crate::stats::Spread;
use crate::targets::TargetKind;

/// Renders the whole report.
pub fn render(r: &CompareReport) -> String {
    let mut s = header(r);
    for sc in &r.scenarios {
        s.push_str(&scenario_section(sc, r.meta.headline_fraction));
    }
    if let Some(i) = &r.iperf {
        s.push_str(&iperf_section(i));
    }
    if let Some(c) = &r.crosscheck {
        s.push_str(&crosscheck_section(c));
    }
    s
}

/// Provenance, self-checks, warnings and headline ratios.
pub fn header(r: &CompareReport) -> String {
    let mut s = String::new();
    let m = &r.meta;
    let _ = writeln!(
        s,
        "# ringmesh-bench compare{}\n",
        if m.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| command | `{}` |", m.command);
    let _ = writeln!(
        s,
        "| commit | {} |",
        m.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(s, "| date | {} ({:.0} s) |", m.date, m.elapsed_s);
    let _ = writeln!(
        s,
        "| machine | {} cores, {}, kernel {}, {:.1} GiB; load average {:.2} at start |",
        m.machine.cores,
        m.machine.cpu,
        m.machine.kernel,
        m.machine.memory_gib,
        m.machine.loadavg_at_start
    );
    let ringmesh_driver = r
        .scenarios
        .iter()
        .flat_map(|sc| &sc.targets)
        .chain(r.iperf.iter().flat_map(|i| &i.targets))
        .find(|t| t.kind == TargetKind::Ringmesh && t.detail.is_some())
        .and_then(|t| t.detail.clone())
        .unwrap_or_else(|| "ringmesh did not run".into());
    let _ = writeln!(
        s,
        "| drivers | generator and upstream: {}; ringmesh {} |",
        m.generator_io, ringmesh_driver
    );
    let _ = writeln!(
        s,
        "| pinning | proxy under test: core(s) {}; generator + upstream: core(s) {}; {} worker(s) per proxy |",
        cores(&m.proxy_cores),
        cores(&m.load_cores),
        m.workers
    );
    let _ = writeln!(
        s,
        "| parameters | {} round(s), targets alternated; max throughput: closed loop, {} connections, {} s; latency: open loop, {} connections ({} streams each for h2), {} s per rate at {} of the slowest proxy's max; {} s warm-up per run; payload {} B, request body {} B |\n",
        m.rounds,
        m.max_connections,
        m.max_duration_s,
        m.connections,
        m.streams,
        m.duration_s,
        m.load_fractions
            .iter()
            .map(|f| format!("{:.0} %", f * 100.0))
            .collect::<Vec<_>>()
            .join(" / "),
        m.warmup_s,
        m.payload,
        m.request_body
    );

    let _ = writeln!(s, "## Self-checks\n");
    for c in &r.checks {
        let mark = match c.passed {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "not run",
        };
        let _ = writeln!(s, "- **{mark}** — {}: {}", c.name, c.detail);
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(s, "\n## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }

    for sc in &r.scenarios {
        let _ = writeln!(s, "\n## Headline, {}\n", sc.title);
        let ringmesh = sc.targets.iter().find(|t| t.kind == TargetKind::Ringmesh);
        match ringmesh {
            None => {
                let _ = writeln!(s, "ringmesh was not among the targets.");
            }
            Some(TargetStatus {
                skipped: Some(reason),
                ..
            }) => {
                let _ = writeln!(
                    s,
                    "ringmesh did not run in this scenario, so there are no ringmesh ratios: {}",
                    one_line(reason)
                );
            }
            Some(_) => {
                let rows: Vec<&RatioRow> = ran_rows(sc)
                    .into_iter()
                    .filter(|row| row.a == TargetKind::Ringmesh)
                    .collect();
                if rows.is_empty() {
                    let _ = writeln!(s, "No peer ran next to ringmesh in this scenario.");
                } else {
                    ratio_table(&mut s, &rows);
                }
            }
        }
    }
    s
}

/// One scenario's tables.
pub fn scenario_section(sc: &ScenarioReport, headline: f64) -> String {
    let mut s = String::new();
    scenario(&mut s, sc, headline);
    s
}

/// The iperf3 table.
pub fn iperf_section(i: &IperfReport) -> String {
    let mut s = String::new();
    iperf(&mut s, i);
    s
}

/// The h2load cross-check.
pub fn crosscheck_section(c: &super::CrossCheck) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Cross-check: open-loop latency vs h2load --rps (direct, {} req/s total, {} s per run)\n",
        fmt_rate(c.rate),
        c.duration_s
    );
    let _ = writeln!(
        s,
        "| case | tool | achieved req/s | p50 | p90 | p99 | p99.9 | max | agree (p50, p90) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for case in &c.cases {
        let row = |s: &mut String,
                   tool: &str,
                   rate: Option<f64>,
                   p: &Option<crate::hist::Percentiles>,
                   agree: &str| {
            let cells = match p {
                Some(p) => format!(
                    "{} | {} | {} | {} | {}",
                    fmt_us(p.p50_us),
                    fmt_us(p.p90_us),
                    fmt_us(p.p99_us),
                    fmt_us(p.p999_us),
                    fmt_us(p.max_us)
                ),
                None => "— | — | — | — | —".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {}{} | {tool} | {} | {cells} | {agree} |",
                case.name,
                if case.judged { " (judged)" } else { "" },
                rate.map_or("—".into(), fmt_rate)
            );
        };
        let agree = match case.agrees {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        row(
            &mut s,
            "ringmesh-bench (as reported)",
            Some(case.ours_rate),
            &case.ours_corrected,
            agree,
        );
        row(
            &mut s,
            "ringmesh-bench (from actual send)",
            Some(case.ours_rate),
            &case.ours_uncorrected,
            "",
        );
        row(&mut s, "h2load", case.h2load_rate, &case.h2load, "");
    }
    let _ = writeln!(s, "\n{}", c.note);
    s
}

fn cores(c: &[usize]) -> String {
    if c.is_empty() {
        "any".into()
    } else {
        crate::sys::core_list(c)
    }
}

fn status_line(s: &mut String, targets: &[TargetStatus]) {
    for t in targets {
        match &t.skipped {
            None => {
                let extra = [
                    t.version.as_str(),
                    t.detail.as_deref().unwrap_or(""),
                    t.tls.as_deref().unwrap_or(""),
                ]
                .iter()
                .filter(|x| !x.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
                let _ = writeln!(
                    s,
                    "- {}: ran{}",
                    t.kind,
                    if extra.is_empty() {
                        String::new()
                    } else {
                        format!(" ({extra})")
                    }
                );
            }
            Some(reason) => {
                let _ = writeln!(s, "- {}: **skipped** — {}", t.kind, one_line(reason));
            }
        }
    }
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

fn cpu(v: f64) -> String {
    format!("{v:.4}")
}

fn scenario(s: &mut String, sc: &ScenarioReport, headline: f64) {
    let _ = writeln!(s, "\n## {}\n", sc.title);
    status_line(s, &sc.targets);
    let _ = writeln!(
        s,
        "\n### Maximum throughput (closed loop)\n\n\
         | target | req/s | proxy CPU (share of its cores) | proxy CPU s / 1000 req | p99 (service time) | bottleneck |\n\
         |---|---|---|---|---|---|"
    );
    for m in &sc.max {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            m.kind,
            fmt_spread(&m.rps, fmt_rate),
            fmt_median(&m.proxy_util, pct),
            fmt_median(&m.cpu_per_1k, cpu),
            fmt_median(&m.p99_us, fmt_us),
            m.bottleneck.label()
        );
    }
    if let Some(slowest) = sc.slowest_max {
        let _ = writeln!(
            s,
            "\nFixed rates below are fractions of the slowest proxy's median maximum, {} req/s{}.",
            fmt_rate(slowest),
            if sc.rate_scale < 1.0 {
                format!(
                    ", scaled by {:.2} because the generator and upstream sustained only {} req/s \
                     open loop against direct and must have 2× headroom",
                    sc.rate_scale,
                    sc.generator_capacity.map_or("—".to_owned(), fmt_rate)
                )
            } else {
                String::new()
            }
        );
    }
    for level in &sc.rates {
        let _ = writeln!(
            s,
            "\n### {:.0} % load{}: {} req/s (open loop, latency corrected for coordinated omission){}{}\n",
            level.fraction * 100.0,
            if (level.of_slowest - level.fraction).abs() > 1e-9 {
                format!(
                    " (scaled: {:.0} % of the slowest max)",
                    level.of_slowest * 100.0
                )
            } else {
                String::new()
            },
            fmt_rate(level.rate),
            match level.headroom {
                Some(true) => "; generator headroom 2×: verified",
                Some(false) => "; **generator headroom 2×: NOT verified**",
                None => "",
            },
            if (level.fraction - headline).abs() < 1e-9 {
                " — headline"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "| target | achieved req/s | p50 | p90 | p99 | p99.9 | max | added p50 | added p99 | proxy CPU s / 1000 req | proxy RSS MiB |\n\
             |---|---|---|---|---|---|---|---|---|---|---|"
        );
        for t in &level.targets {
            latency_row(s, t);
        }
        let mut notes = Vec::new();
        for t in &level.targets {
            for reason in &t.refused {
                notes.push(format!("{} {reason}", t.kind));
            }
            if t.generator_limited {
                notes.push(format!(
                    "{}: generator-limited in some run (generator lag p90 up to {}, or the \
                     generator and upstream filled their cores): the load was not sent on \
                     schedule; treat this latency with care",
                    t.kind,
                    t.generator_lag_p90_us.map_or("—".into(), fmt_us)
                ));
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(s);
            for n in notes {
                let _ = writeln!(s, "- {n}");
            }
        }
    }
    if !sc.idle_memory.is_empty() {
        let _ = writeln!(
            s,
            "\n### Idle keep-alive connections\n\n\
             | target | connections | proxy RSS growth per connection |\n|---|---|---|"
        );
        for m in &sc.idle_memory {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                m.kind,
                m.connections,
                fmt_spread(&m.kib_per_connection, |v| format!("{v:.1} KiB"))
            );
        }
    }
    for h in sc.handshakes.iter().chain(&sc.resumed_handshakes) {
        let _ = writeln!(
            s,
            "\n### New TLS handshakes (closed loop, {} connections, a new connection per request, {} handshakes)\n\n\
             Each request: TCP connect, TLS handshake, one request with `Connection: close`, close. \
             Handshakes per second is the rate of such requests; the proxy's CPU covers the accept, \
             the handshake, the proxied request and the close.\n\n\
             | target | handshakes/s | resumed (share of the client's handshakes) | proxy CPU (share of its cores) | proxy CPU s / 1000 handshakes | p99 (connect + handshake + request) | bottleneck |\n\
             |---|---|---|---|---|---|---|",
            h.connections,
            if h.resumption {
                "resumed (tickets or session IDs from the target's earlier handshakes)"
            } else {
                "full (no resumption)"
            }
        );
        for m in &h.max {
            let resumed = crate::stats::Spread::of(
                &h.runs
                    .iter()
                    .filter(|r| r.target == m.kind)
                    .filter_map(|r| r.resumed_share)
                    .collect::<Vec<_>>(),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.kind,
                fmt_spread(&m.rps, fmt_rate),
                fmt_median(&resumed, pct),
                fmt_median(&m.proxy_util, pct),
                fmt_median(&m.cpu_per_1k, cpu),
                fmt_median(&m.p99_us, fmt_us),
                m.bottleneck.label()
            );
        }
    }
    let rows = ran_rows(sc);
    if !rows.is_empty() {
        let _ = writeln!(s, "\n### Ratios (paired by round)\n");
        ratio_table(s, &rows);
    }
}

/// Ratio rows whose two targets both ran in the scenario.
fn ran_rows(sc: &ScenarioReport) -> Vec<&RatioRow> {
    let ran = |k: TargetKind| {
        sc.targets
            .iter()
            .any(|t| t.kind == k && t.skipped.is_none())
    };
    sc.ratios.iter().filter(|r| ran(r.a) && ran(r.b)).collect()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn latency_row(s: &mut String, t: &LatencySummary) {
    if t.valid_runs == 0 {
        let _ = writeln!(
            s,
            "| {} | {} | refused | refused | refused | refused | refused | — | — | {} | {} |",
            t.kind,
            fmt_spread(&t.achieved, fmt_rate),
            fmt_median(&t.cpu_per_1k, cpu),
            fmt_median(&t.rss_mib, |v| format!("{v:.1}"))
        );
        return;
    }
    let _ = writeln!(
        s,
        "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        t.kind,
        fmt_spread(&t.achieved, fmt_rate),
        if t.valid_runs < t.runs {
            format!(" ({} of {} runs valid)", t.valid_runs, t.runs)
        } else {
            String::new()
        },
        fmt_spread(&t.p50, fmt_us),
        fmt_spread(&t.p90, fmt_us),
        fmt_spread(&t.p99, fmt_us),
        fmt_median(&t.p999, fmt_us),
        fmt_median(&t.max, fmt_us),
        fmt_median(&t.added_p50, fmt_us),
        fmt_spread(&t.added_p99, fmt_us),
        fmt_spread(&t.cpu_per_1k, cpu),
        fmt_median(&t.rss_mib, |v| format!("{v:.1}"))
    );
}

fn ratio_table(s: &mut String, rows: &[&RatioRow]) {
    let _ = writeln!(
        s,
        "| metric | ratio | median (min–max) | reads as |\n|---|---|---|---|"
    );
    for row in rows {
        let _ = writeln!(
            s,
            "| {} | {}/{} | {} | {} |",
            row.metric,
            row.a,
            row.b,
            fmt_spread(&row.ratio, |v| format!("{v:.2}")),
            reads_as(row)
        );
    }
}

/// "ringmesh 1.20× nginx (better)" in words.
fn reads_as(row: &RatioRow) -> String {
    let Some(Spread { median, .. }) = row.ratio else {
        return "not measured".into();
    };
    let good = match row.better {
        Better::Higher => median > 1.0,
        Better::Lower => median < 1.0,
    };
    let what = match row.better {
        Better::Higher => "higher is better",
        Better::Lower => "lower is better",
    };
    if (median - 1.0).abs() < 0.02 {
        format!("{} ≈ {} ({what})", row.a, row.b)
    } else {
        format!(
            "{} {} than {} ({what})",
            row.a,
            if good { "better" } else { "worse" },
            row.b
        )
    }
}

fn iperf(s: &mut String, i: &IperfReport) {
    let _ = writeln!(
        s,
        "\n## L4 bulk: {} , {} s per run\n",
        i.version, i.duration_s
    );
    status_line(s, &i.targets);
    let _ = writeln!(
        s,
        "\n| target | streams | Gbit/s | proxy CPU s / GB | proxy CPU (share of its cores) | failures |\n|---|---|---|---|---|---|"
    );
    for row in &i.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            row.kind,
            row.streams,
            fmt_spread(&row.gbps, |v| format!("{v:.2}")),
            fmt_median(&row.cpu_s_per_gb, |v| format!("{v:.3}")),
            fmt_median(&row.proxy_util, pct),
            if row.failures.is_empty() {
                "—".to_owned()
            } else {
                row.failures.join("; ")
            }
        );
    }
}
