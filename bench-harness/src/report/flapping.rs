//! The report of `flapping`: Markdown (summary and per-bucket tables) and a self-contained HTML
//! page with the success-rate and latency curves of both variants on shared axes.

use std::fmt::Write;

use super::fmt_us;
use super::html::{self, TimeSeries, ValueAxis};
use crate::flapping::{FlappingReport, Variant, VariantReport, down_phases};
use crate::hist::Percentiles;
use crate::upstream::FlapMode;

/// Colour of a variant in the charts.
fn color(v: Variant) -> &'static str {
    match v {
        Variant::Plain => "#d62728",
        Variant::Resilient => "#1f77b4",
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.2} %", v * 100.0))
}

fn count(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
}

fn latency(p: &Option<Percentiles>, f: impl Fn(&Percentiles) -> f64) -> String {
    p.as_ref().map_or_else(|| "–".to_owned(), |p| fmt_us(f(p)))
}

/// Provenance and the summary table.
pub fn summary(r: &FlappingReport) -> String {
    let m = &r.meta;
    let mut s = String::from("# ringmesh-bench flapping\n\n| | |\n|---|---|\n");
    let _ = writeln!(s, "| command | `{}` |", m.command);
    let _ = writeln!(
        s,
        "| commit | {} |",
        m.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(s, "| date | {} |", m.date);
    let _ = writeln!(
        s,
        "| machine | {} cores, {}, kernel {}; load average {:.2} at start |",
        m.machine.cores, m.machine.cpu, m.machine.kernel, m.machine.loadavg_at_start
    );
    let _ = writeln!(s, "| ringmesh | {} |", m.ringmesh_version);
    let _ = writeln!(
        s,
        "| cores | proxy {:?} ({} worker(s)), generator + upstreams {:?} |",
        m.proxy_cores, m.workers, m.load_cores
    );
    let _ = writeln!(
        s,
        "| cluster | {} endpoints; the first is down ({}) for {:.1} s of every {:.1} s |",
        m.endpoints,
        match m.flap.mode {
            FlapMode::Status503 => "answers 503",
            FlapMode::Reset => "resets connections",
        },
        m.flap.down.as_secs_f64(),
        m.flap.period.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| load | HTTP/1.1, open loop, {:.0} req/s over {} connections, {:.1} s measured after {:.1} s warm-up, {} s buckets, {:.1} s timeout |",
        m.rate, m.connections, m.duration_s, m.warmup_s, m.bucket_s, m.timeout_s
    );
    let p = &m.policies;
    let _ = writeln!(
        s,
        "| policies | retries: `attempts = {}`, `retry_on = [\"5xx\", \"reset\", \"connect-failure\"]`; outlier detection: `consecutive_5xx = {}`, `base_ejection_time = {:?}`, `max_ejection_time = {:?}`, `interval = {:?}` |",
        p.attempts, p.consecutive_5xx, p.base_ejection_time, p.max_ejection_time, p.interval
    );
    for w in &m.warnings {
        let _ = writeln!(s, "\n**Warning:** {w}");
    }
    s.push_str(
        "\n## Summary\n\nSuccess = a 2xx answer; latency is that of the successful requests, from \
         their intended send time (open loop). Retries and ejections are ringmesh's counters over \
         the measured window.\n\n\
         | ringmesh | requests | success rate | failed (status / reset, closed / timeout / other) | p50 | p99 | p99.9 | max | retries | ejections |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for v in &r.variants {
        if let Some(reason) = &v.skipped {
            let _ = writeln!(s, "| {} | skipped: {reason} |||||||||", v.variant.title());
            continue;
        }
        let e = &v.errors;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({} / {} / {} / {}) | {} | {} | {} | {} | {} | {} |",
            v.variant.title(),
            v.scheduled,
            pct(v.success_rate),
            e.total(),
            e.status,
            e.io,
            e.timeout,
            e.connect + e.protocol,
            latency(&v.latency, |p| p.p50_us),
            latency(&v.latency, |p| p.p99_us),
            latency(&v.latency, |p| p.p999_us),
            latency(&v.latency, |p| p.max_us),
            count(v.retries),
            count(v.ejections),
        );
    }
    if let Some(v) = r
        .variants
        .iter()
        .find(|v| v.skipped.is_none() && v.window_phase_s > r.meta.bucket_s)
    {
        let _ = writeln!(
            s,
            "\n**Warning:** the window of \"{}\" started {:.2} s into a flapping cycle, not at its \
             start: its down phases are shifted against the other variant's.",
            v.variant.title(),
            v.window_phase_s
        );
    }
    s
}

/// Per bucket: whether the upstream was down, success rate and p99 of each variant.
pub fn buckets_table(r: &FlappingReport) -> String {
    let ran: Vec<&VariantReport> = r.variants.iter().filter(|v| v.skipped.is_none()).collect();
    let Some(first) = ran.first() else {
        return String::new();
    };
    let bands = bands(r, first);
    let mut s = String::from("\n## Over time\n\n| t (s) | upstream 1 |");
    for v in &ran {
        let _ = write!(
            s,
            " success, {0} | p50, {0} | p99, {0} |",
            v.variant.title()
        );
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|---|---|".repeat(ran.len()));
    s.push('\n');
    for (i, b) in first.timeline.iter().enumerate() {
        let mid = b.t_s + r.meta.bucket_s / 2.0;
        let down = bands.iter().any(|&(from, to)| mid >= from && mid < to);
        let _ = write!(s, "| {:.2} | {} |", b.t_s, if down { "down" } else { "up" });
        for v in &ran {
            let cell = v.timeline.get(i);
            let _ = write!(
                s,
                " {} | {} | {} |",
                pct(cell.and_then(|c| c.success_rate)),
                cell.and_then(|c| c.p50_us).map_or("–".into(), fmt_us),
                cell.and_then(|c| c.p99_us).map_or("–".into(), fmt_us)
            );
        }
        s.push('\n');
    }
    s
}

/// The whole Markdown report.
pub fn markdown(r: &FlappingReport) -> String {
    let mut s = summary(r);
    s.push_str(&buckets_table(r));
    s.push_str("\n## Configs\n");
    for v in &r.variants {
        let _ = write!(
            s,
            "\n### {}\n\n```toml\n{}```\n",
            v.variant.title(),
            v.config
        );
    }
    s
}

/// The down phases of the flapping endpoint in `v`'s window.
fn bands(r: &FlappingReport, v: &VariantReport) -> Vec<(f64, f64)> {
    down_phases(
        &r.meta.flap,
        std::time::Duration::from_secs_f64(v.window_phase_s.max(0.0)),
        std::time::Duration::from_secs_f64(r.meta.duration_s.max(0.0)),
    )
}

/// The two charts: success rate and p99 over time, both variants on each.
pub fn charts(r: &FlappingReport) -> String {
    let ran: Vec<&VariantReport> = r.variants.iter().filter(|v| v.skipped.is_none()).collect();
    let Some(first) = ran.first() else {
        return String::new();
    };
    let bands = bands(r, first);
    let half = r.meta.bucket_s / 2.0;
    let series = |f: &dyn Fn(&crate::timeline::BucketSummary) -> Option<f64>| -> Vec<TimeSeries> {
        ran.iter()
            .map(|v| TimeSeries {
                label: v.variant.title().to_owned(),
                color: color(v.variant),
                // Both runs sit at 100 % while the endpoint is up: keep the first one visible.
                dashed: v.variant == Variant::Resilient,
                points: v.timeline.iter().map(|b| (b.t_s + half, f(b))).collect(),
            })
            .collect()
    };
    let x_max = r.meta.duration_s;
    let mut out = String::from("<div class=\"plots\">\n");
    out.push_str(&html::time_chart(
        "success rate (2xx share) per bucket",
        x_max,
        ValueAxis::Linear(1.0),
        &|v| format!("{:.0} %", v * 100.0),
        &series(&|b| b.success_rate),
        &bands,
    ));
    out.push_str(&html::time_chart(
        "p99 latency of successful requests per bucket",
        x_max,
        ValueAxis::Log,
        &fmt_us,
        &series(&|b| b.p99_us),
        &bands,
    ));
    out.push_str(&html::time_chart(
        "p50 latency of successful requests per bucket",
        x_max,
        ValueAxis::Log,
        &fmt_us,
        &series(&|b| b.p50_us),
        &bands,
    ));
    out.push_str("</div>\n");
    out
}

/// The HTML page: summary, charts, per-bucket table, configs.
pub fn html(r: &FlappingReport) -> String {
    let mut body = html::md_to_html(&summary(r));
    body.push_str(&charts(r));
    body.push_str(&html::md_to_html(&buckets_table(r)));
    body.push_str("<h2>Configs</h2>\n");
    for v in &r.variants {
        let _ = write!(
            body,
            "<h3>{}</h3>\n<pre><code>{}</code></pre>\n",
            html::escape(v.variant.title()),
            html::escape(&v.config)
        );
    }
    html::page(
        &format!("ringmesh-bench flapping {}", r.meta.date),
        &body,
        &format!(
            "Generated by ringmesh-bench {}. The data behind every number is in report.json next to this file.",
            r.meta.tool_version
        ),
    )
}
