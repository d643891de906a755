//! The results of `cargo xtask bench`: every run's metrics, the table on
//! stdout (median [min–max] per server, endpoint/kernel ratio, server CPU
//! per unit of work), the JSON file and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};

use crate::bench::{Kind, Workload};
use crate::profile::Part;
use crate::root;

/// One row of the table: a metric of a workload.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Key in [`RunResult::metrics`].
    pub key: &'static str,
    pub unit: &'static str,
    pub higher_better: bool,
    /// The server CPU time per unit of work that goes with this metric:
    /// its key in [`RunResult::metrics`] and its unit.
    pub cpu: Option<(&'static str, &'static str)>,
}

impl Metric {
    pub const fn new(key: &'static str, unit: &'static str, higher_better: bool) -> Metric {
        Metric {
            key,
            unit,
            higher_better,
            cpu: None,
        }
    }

    pub const fn with_cpu(self, key: &'static str, unit: &'static str) -> Metric {
        Metric {
            cpu: Some((key, unit)),
            ..self
        }
    }
}

/// One measured run.
#[derive(Debug)]
pub struct RunResult {
    /// Every number of the run by name (`mbps`, `tps`, `p99_us`,
    /// `cpu_us_per_txn`, `kib_per_conn`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// CPU time the server spent over the measured part of the run: the
    /// server process (all its threads) plus the server veth's NAPI
    /// kthreads, where the kernel's receive processing runs for both
    /// servers.
    pub server_cpu_ms: f64,
    /// The endpoint's core counters after the run; for the kernel, its
    /// server namespace's TCP counters over the run.
    pub counters: BTreeMap<String, u64>,
    /// 1-minute load average when the run started: other work on the
    /// machine shows here.
    pub load1: f64,
    /// Whatever else the run reports (iperf3's summary, the load
    /// generator's report, memory figures), kept in the JSON.
    pub detail: Value,
}

impl RunResult {
    pub fn new(server_cpu_ms: f64, load1: f64) -> RunResult {
        RunResult {
            metrics: BTreeMap::new(),
            server_cpu_ms,
            counters: BTreeMap::new(),
            load1,
            detail: json!({}),
        }
    }

    pub fn metric(mut self, key: &str, value: f64) -> RunResult {
        self.metrics.insert(key.to_owned(), value);
        self
    }
}

pub type Runs = BTreeMap<&'static str, Vec<Result<RunResult>>>;
pub type Report = Vec<(Workload, Runs)>;

/// Median, min and max of `key` over the successful runs.
pub fn summary(runs: &[Result<RunResult>], key: &str) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|r| r.metrics.get(key).copied())
        .filter(|v| v.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

fn runs_of<'a>(runs: &'a Runs, server: &str) -> &'a [Result<RunResult>] {
    runs.get(server).map(Vec::as_slice).unwrap_or(&[])
}

/// A number with about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The label of the axis tick 10^d.
fn tick(d: f64) -> String {
    let v = 10f64.powf(d);
    if d >= 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.*}", (-d).round() as usize)
    }
}

/// One run's figures, for the progress output.
pub fn run_line(w: &Workload, r: &RunResult) -> String {
    let mut parts = Vec::new();
    for m in w.metrics() {
        if let Some(v) = r.metrics.get(m.key) {
            let mut s = format!("{} {}", num(*v), m.unit);
            if let Some(c) = m.cpu.and_then(|(k, u)| Some((r.metrics.get(k)?, u))) {
                let _ = write!(s, " (server CPU {} {})", num(*c.0), c.1);
            }
            parts.push(s);
        }
    }
    parts.join(", ")
}

fn ratio(e: Option<(f64, f64, f64)>, k: Option<(f64, f64, f64)>) -> Option<f64> {
    match (e, k) {
        (Some(e), Some(k)) if k.0 > 0.0 => Some(e.0 / k.0),
        _ => None,
    }
}

/// TCP payload bytes per full-size segment: a 1500-byte MTU less the
/// IPv4 and TCP headers and the 12-byte timestamp option (on for both
/// servers): what one 1514-byte frame of the ceiling carries in bulk.
pub const MSS: f64 = 1448.0;

/// One comparison of an endpoint workload with the reflection ceiling.
#[derive(Clone, Debug, PartialEq)]
pub struct CeilingRow {
    /// The issue's target this row checks.
    pub target: &'static str,
    /// The endpoint workload and the ceiling workload compared.
    pub workload: String,
    pub ceiling: String,
    /// The endpoint's figure (median of its runs) and the ceiling's in
    /// the same unit.
    pub unit: &'static str,
    pub endpoint: f64,
    pub ceiling_value: f64,
    /// endpoint / ceiling_value, and the share the target asks for.
    pub share: f64,
    pub goal: f64,
    /// Per server CPU-second: the ceiling's server µs per frame over the
    /// endpoint's server µs per segment pair (bulk: per MSS of payload),
    /// i.e. the endpoint's rate per CPU-second as a share of the
    /// ceiling's; not distorted by how much of CPU 1 each run got.
    pub cpu_share: Option<f64>,
    /// The best row of its target (the one the target is judged by).
    pub best: bool,
}

/// The issue's two targets against the reflection ceiling, from the
/// report's medians (endpoint runs only):
///
/// - "TCP packet rate >= 80 % of the ceiling": the endpoint's segment
///   pairs per second (segments in + out over 2: one reflected frame is
///   one in and one out) in every rr and crr workload against
///   ceiling-60B's frames/s. rr and crr because their segments are small
///   (64-byte payloads, 118–130-byte frames), as close to the 60-byte
///   frames as TCP gets, and the packet rate is all they measure; bulk
///   segments are full-size and are compared with ceiling-1514B below.
///   The best of them is the one judged.
/// - "single-stream bulk >= 90 % of the ceiling's frames/s x MSS":
///   iperf3-up-P1-txoff and upload-0pct Mbit/s (one stream into the
///   endpoint, 1514-byte frames, the receive direction the reflector
///   also has) against ceiling-1514B frames/s x 1448 B x 8.
pub fn ceiling_rows(report: &Report) -> Vec<CeilingRow> {
    let find = |name: &str| report.iter().find(|(w, _)| w.name == name);
    let med = |runs: &Runs, key: &str| summary(runs_of(runs, "endpoint"), key).map(|s| s.0);
    let mut rows = Vec::new();
    if let Some((c, cruns)) = find("ceiling-60B") {
        if let Some(fps) = med(cruns, "frames_per_sec") {
            let c_us = med(cruns, "server_us_per_frame");
            let mut group: Vec<CeilingRow> = report
                .iter()
                .filter(|(w, _)| matches!(w.kind, Kind::Rr { .. } | Kind::Crr { .. }))
                .filter_map(|(w, runs)| {
                    let rate = med(runs, "seg_pairs_per_sec")?;
                    let us = med(runs, "cpu_us_per_seg_pair");
                    Some(CeilingRow {
                        target: "TCP packet rate >= 80 % of the reflection ceiling",
                        workload: w.name.clone(),
                        ceiling: c.name.clone(),
                        unit: "segment pairs/s vs frames/s",
                        endpoint: rate,
                        ceiling_value: fps,
                        share: rate / fps,
                        goal: 0.8,
                        cpu_share: c_us.zip(us).map(|(c, e)| c / e),
                        best: false,
                    })
                })
                .collect();
            mark_best(&mut group);
            rows.extend(group);
        }
    }
    if let Some((c, cruns)) = find("ceiling-1514B") {
        if let Some(fps) = med(cruns, "frames_per_sec") {
            let c_us = med(cruns, "server_us_per_frame");
            let ceiling_mbps = fps * MSS * 8.0 / 1e6;
            let mut group: Vec<CeilingRow> = ["iperf3-up-P1-txoff", "upload-0pct"]
                .into_iter()
                .filter_map(|name| {
                    let (w, runs) = find(name)?;
                    let mbps = med(runs, "mbps")?;
                    // µs per MiB -> µs per MSS of payload.
                    let us = med(runs, "cpu_us_per_mib").map(|v| v * MSS / (1 << 20) as f64);
                    Some(CeilingRow {
                        target: "single-stream bulk >= 90 % of the ceiling's frames/s x MSS",
                        workload: w.name.clone(),
                        ceiling: c.name.clone(),
                        unit: "Mbit/s vs frames/s x 1448 B",
                        endpoint: mbps,
                        ceiling_value: ceiling_mbps,
                        share: mbps / ceiling_mbps,
                        goal: 0.9,
                        cpu_share: c_us.zip(us).map(|(c, e)| c / e),
                        best: false,
                    })
                })
                .collect();
            mark_best(&mut group);
            rows.extend(group);
        }
    }
    rows
}

fn mark_best(group: &mut [CeilingRow]) {
    if let Some(b) = group
        .iter_mut()
        .filter(|r| r.share.is_finite())
        .max_by(|a, b| a.share.total_cmp(&b.share))
    {
        b.best = true;
    }
}

fn print_ceiling_rows(rows: &[CeilingRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "against the reflection ceiling (endpoint medians; * = the row its target is judged by)"
    );
    println!(
        "  {:<20} {:<14} {:>12} {:>12} {:>7} {:>5}  {:<28}  target",
        "workload", "ceiling", "endpoint", "ceiling", "share", "goal", "unit"
    );
    for r in rows {
        println!(
            "{} {:<20} {:<14} {:>12} {:>12} {:>6.1}% {:>4.0}%  {:<28}  {}{}",
            if r.best { "*" } else { " " },
            r.workload,
            r.ceiling,
            num(r.endpoint),
            num(r.ceiling_value),
            r.share * 100.0,
            r.goal * 100.0,
            r.unit,
            r.target,
            r.cpu_share.map_or(String::new(), |c| format!(
                "; per server CPU-second {:.1} % of the ceiling",
                c * 100.0
            )),
        );
    }
    println!();
}

fn ceiling_json(rows: &[CeilingRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "target": r.target,
                    "workload": r.workload,
                    "ceiling": r.ceiling,
                    "unit": r.unit,
                    "endpoint": r.endpoint,
                    "ceiling_value": r.ceiling_value,
                    "share": r.share,
                    "goal": r.goal,
                    "met": r.share >= r.goal,
                    "cpu_share": r.cpu_share,
                    "best": r.best,
                })
            })
            .collect(),
    )
}

pub fn print_table(report: &Report) {
    let cell = |s: Option<(f64, f64, f64)>| match s {
        Some((m, lo, hi)) => format!("{} [{}–{}]", num(m), num(lo), num(hi)),
        None => "failed".to_owned(),
    };
    // A server a workload does not run against (the ceiling's kernel).
    let cell_of = |runs: &Runs, server: &str, key: &str| {
        if runs_of(runs, server).is_empty() {
            "-".to_owned()
        } else {
            cell(summary(runs_of(runs, server), key))
        }
    };
    println!();
    println!(
        "{:<23} {:<16} {:>26} {:>26} {:>9}  server CPU per unit",
        "workload", "metric", "endpoint", "kernel", "ep/kernel"
    );
    println!(
        "{:<23} {:<16} {:>26} {:>26} {:>9}  endpoint / kernel (ratio)",
        "", "", "median [min–max]", "median [min–max]", ""
    );
    for (w, runs) in report {
        for (i, m) in w.metrics().iter().enumerate() {
            let e = summary(runs_of(runs, "endpoint"), m.key);
            let k = summary(runs_of(runs, "kernel"), m.key);
            let r = ratio(e, k).map_or("-".to_owned(), |r| format!("{r:.2}"));
            let cpu = m.cpu.map_or(String::new(), |(key, unit)| {
                let e = summary(runs_of(runs, "endpoint"), key);
                let k = summary(runs_of(runs, "kernel"), key);
                match (e, k, ratio(e, k)) {
                    (Some(e), Some(k), Some(r)) => {
                        format!("{} / {} {unit} ({r:.2})", num(e.0), num(k.0))
                    }
                    _ => format!("- {unit}"),
                }
            });
            let arrow = if m.higher_better { "↑" } else { "↓" };
            let cpu = match (cpu.is_empty(), m.cpu, runs_of(runs, "kernel").is_empty()) {
                // Endpoint only: its CPU per unit alone.
                (false, Some((key, unit)), true) => summary(runs_of(runs, "endpoint"), key)
                    .map_or(format!("- {unit}"), |e| format!("{} {unit}", num(e.0))),
                _ => cpu,
            };
            println!(
                "{:<23} {:<16} {:>26} {:>26} {:>9}  {}",
                if i == 0 { w.name.as_str() } else { "" },
                format!("{} {arrow}", m.unit),
                cell_of(runs, "endpoint", m.key),
                cell_of(runs, "kernel", m.key),
                r,
                cpu
            );
        }
    }
    println!("(↑ higher is better, ↓ lower is better; server CPU per unit: lower is better)");
    if report
        .iter()
        .any(|(w, _)| matches!(w.kind, Kind::Ceiling { .. }))
    {
        println!(
            "(ceiling-*: tcp-user reflect, no TCP, in the endpoint column; server CPU = \
             reflector + the server veth's NAPI kthread)"
        );
    }
    if report.iter().any(|(w, _)| w.name.ends_with("-offload")) {
        println!(
            "(*-offload: the kernel with Linux's default offloads on both veth ends (TSO/GSO); \
             the endpoint with the client veth's tx checksum offload off, which its XDP \
             program needs, the rest default. *-txoff: tx off on both ends for both.)"
        );
    }
    println!();
    print_ceiling_rows(&ceiling_rows(report));
    for l in profile_lines(report) {
        println!("{l}");
    }
}

/// A profiled run's server CPU per unit of work and its parts' shares.
fn profile_of(runs: &Runs, server: &str, cpu_key: &str) -> Option<(f64, Vec<f64>)> {
    runs_of(runs, server).iter().flatten().find_map(|r| {
        let shares = r.detail["profile"]["shares"].as_object()?;
        let total = *r.metrics.get(cpu_key)?;
        let parts = Part::ALL
            .iter()
            .map(|p| shares.get(p.key()).and_then(Value::as_f64).unwrap_or(0.0))
            .collect();
        Some((total, parts))
    })
}

/// `--perf`: the profiled run's server CPU per unit of work, split into
/// the parts of profile.rs, the endpoint's and the kernel's side by side;
/// and what the endpoint's would be with its own userspace free. No lines
/// when nothing was profiled.
fn profile_lines(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for (w, runs) in report {
        let Some((cpu_key, unit)) = w.metrics().first().and_then(|m| m.cpu) else {
            continue;
        };
        let e = profile_of(runs, "endpoint", cpu_key);
        let k = profile_of(runs, "kernel", cpu_key);
        if e.is_none() && k.is_none() {
            continue;
        }
        if lines.is_empty() {
            lines.push(String::new());
            lines.push(
                "where the server CPU goes (--perf: perf record on the server CPU in the first \
                 run; a part = its share of the samples x that run's server CPU per unit)"
                    .to_owned(),
            );
            let mut h = format!("{:<23} {:<9} {:>8}", "workload", "server", "total");
            for p in Part::ALL {
                let _ = write!(h, " {:>9}", p.column());
            }
            lines.push(h + "  unit");
        }
        for (i, (server, p)) in [("endpoint", &e), ("kernel", &k)].into_iter().enumerate() {
            let Some((total, shares)) = p else { continue };
            let mut l = format!(
                "{:<23} {server:<9} {:>8}",
                if i == 0 { w.name.as_str() } else { "" },
                num(*total)
            );
            for share in shares {
                let _ = write!(l, " {:>9}", num(share * total));
            }
            lines.push(format!("{l}  {unit}"));
        }
        if let (Some((et, es)), Some((kt, _))) = (&e, &k) {
            let user = Part::ALL
                .iter()
                .zip(es)
                .find(|(p, _)| **p == Part::User)
                .map_or(0.0, |(_, s)| *s);
            let without = et * (1.0 - user);
            lines.push(format!(
                "{:<23} endpoint without its own userspace: {} {unit}, {:.2}x the kernel's",
                "",
                num(without),
                without / kt
            ));
        }
    }
    if !lines.is_empty() {
        lines.push(
            "(bridge+cl: the frames a server sends, bridged and received by the client's TCP \
             inside the server's own transmit, on the server CPU, for both servers alike; \
             napi: the server veth's NAPI kthread; other-k: other kernel code)"
                .to_owned(),
        );
    }
    lines
}

fn stats_json(s: Option<(f64, f64, f64)>) -> Value {
    match s {
        Some((m, lo, hi)) => json!({ "median": m, "min": lo, "max": hi }),
        None => Value::Null,
    }
}

pub fn to_json(runs_per_server: u32, topology: &Value, report: &Report) -> Value {
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let workloads: Vec<Value> = report
        .iter()
        .map(|(w, runs)| {
            let metrics: Vec<Value> = w
                .metrics()
                .iter()
                .map(|m| {
                    let e = summary(runs_of(runs, "endpoint"), m.key);
                    let k = summary(runs_of(runs, "kernel"), m.key);
                    let mut o = json!({
                        "key": m.key,
                        "unit": m.unit,
                        "higher_is_better": m.higher_better,
                        "endpoint": stats_json(e),
                        "kernel": stats_json(k),
                        "ratio_endpoint_kernel": ratio(e, k),
                    });
                    if let Some((key, unit)) = m.cpu {
                        let e = summary(runs_of(runs, "endpoint"), key);
                        let k = summary(runs_of(runs, "kernel"), key);
                        o["server_cpu"] = json!({
                            "key": key,
                            "unit": unit,
                            "endpoint": stats_json(e),
                            "kernel": stats_json(k),
                            "ratio_endpoint_kernel": ratio(e, k),
                        });
                    }
                    o
                })
                .collect();
            let mut servers = serde_json::Map::new();
            for (name, runs) in runs {
                let runs: Vec<Value> = runs
                    .iter()
                    .map(|r| match r {
                        Ok(r) => json!({
                            "metrics": r.metrics,
                            "server_cpu_ms": r.server_cpu_ms,
                            "load1": r.load1,
                            "counters": r.counters,
                            "detail": r.detail,
                        }),
                        Err(e) => json!({ "error": format!("{e:#}") }),
                    })
                    .collect();
                servers.insert((*name).to_owned(), json!({ "runs": runs }));
            }
            json!({
                "name": w.name,
                "description": w.describe(),
                "kind": format!("{:?}", w.kind),
                "secs": w.secs,
                "metrics": metrics,
                "servers": servers,
            })
        })
        .collect();
    json!({
        "commit": commit,
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "runs": runs_per_server,
        "topology": topology,
        "workloads": workloads,
        "ceiling_comparisons": ceiling_json(&ceiling_rows(report)),
    })
}

/// One bar pair of the chart.
struct ChartRow {
    label: String,
    metric: Option<f64>,
    cpu: Option<f64>,
    /// The target share (ceiling comparisons): a red mark.
    goal: Option<f64>,
}

/// XML text escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Grouped horizontal bars, one group per workload: the endpoint/kernel
/// ratio of its primary metric and of the server CPU per unit of work, on
/// a log axis, each bar drawn from parity (1) to its ratio.
pub fn chart_svg(report: &Report) -> String {
    let mut rows: Vec<ChartRow> = report
        .iter()
        // Endpoint-only workloads (the ceiling) have no ratio to draw;
        // they appear through the comparisons below.
        .filter(|(w, _)| w.servers().len() > 1)
        .filter_map(|(w, runs)| {
            let m = *w.metrics().first()?;
            let r = ratio(
                summary(runs_of(runs, "endpoint"), m.key),
                summary(runs_of(runs, "kernel"), m.key),
            );
            let c = m.cpu.and_then(|(key, _)| {
                ratio(
                    summary(runs_of(runs, "endpoint"), key),
                    summary(runs_of(runs, "kernel"), key),
                )
            });
            let arrow = if m.higher_better { "↑" } else { "↓" };
            Some(ChartRow {
                label: format!("{} ({} {arrow})", w.name, m.unit),
                metric: r,
                cpu: c,
                goal: None,
            })
        })
        .collect();
    let ceiling_from = rows.len();
    rows.extend(ceiling_rows(report).into_iter().map(|r| ChartRow {
        label: format!(
            "{}{} / {} (goal {:.0} %)",
            if r.best { "* " } else { "" },
            r.workload,
            r.ceiling,
            r.goal * 100.0
        ),
        metric: Some(r.share),
        cpu: r.cpu_share,
        goal: Some(r.goal),
    }));
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.metric, r.cpu])
        .flatten()
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let lo = values
        .iter()
        .copied()
        .fold(0.1f64, f64::min)
        .log10()
        .floor()
        .max(-4.0);
    let hi = values
        .iter()
        .copied()
        .fold(10.0f64, f64::max)
        .log10()
        .ceil()
        .min(4.0);
    let (left, plot_w, row_h, top) = (300.0, 560.0, 34.0, 70.0);
    let width = left + plot_w + 40.0;
    // Room for the heading of the ceiling comparisons, if any.
    let gap = if rows.len() > ceiling_from { 18.0 } else { 0.0 };
    let row_y = |i: usize| top + row_h * i as f64 + if i >= ceiling_from { gap } else { 0.0 };
    let height = top + row_h * rows.len().max(1) as f64 + gap + 60.0;
    let x = |v: f64| left + (v.log10().clamp(lo, hi) - lo) / (hi - lo) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" font-weight="bold" text-anchor="middle">tcp-user endpoint / Linux kernel (median of runs; log scale; 1 = parity)</text>"#,
        width / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="34" width="12" height="12" fill="#3b75af"/><text x="{}" y="44">primary metric (↑: above 1 the endpoint is better; ↓: below 1)</text>"##,
        left + 16.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="50" width="12" height="12" fill="#ef8636"/><text x="{}" y="60">server CPU per unit of work (below 1 the endpoint spends less)</text>"##,
        left + 16.0
    );
    let bottom = top + row_h * rows.len().max(1) as f64 + gap;
    let mut d = lo;
    while d <= hi + 1e-9 {
        let xv = x(10f64.powf(d));
        let (stroke, w) = if d.abs() < 1e-9 {
            ("#000", 1.5)
        } else {
            ("#ccc", 1.0)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{bottom}" stroke="{stroke}" stroke-width="{w}"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            tick(d)
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">endpoint / kernel</text>"#,
        left + plot_w / 2.0,
        bottom + 34.0
    );
    let one = x(1.0);
    for (i, r) in rows.iter().enumerate() {
        let y0 = row_y(i);
        if i == ceiling_from {
            let yl = y0 - gap;
            let _ = writeln!(
                s,
                r##"<line x1="10" y1="{yl:.1}" x2="{:.1}" y2="{yl:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
                left + plot_w
            );
            let _ = writeln!(
                s,
                r##"<text x="10" y="{:.1}" font-size="10" fill="#555">below: endpoint / reflection ceiling (1 = the ceiling; blue rate, orange per server CPU-second; red mark = goal)</text>"##,
                yl + 13.0
            );
        }
        if let Some(g) = r.goal {
            let gx = x(g);
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{:.1}" stroke="#c00" stroke-width="2"/>"##,
                y0 + 2.0,
                y0 + row_h - 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y0 + row_h / 2.0 + 4.0,
            esc(&r.label)
        );
        for (j, (v, color)) in [(r.metric, "#3b75af"), (r.cpu, "#ef8636")]
            .into_iter()
            .enumerate()
        {
            let y = y0 + 4.0 + j as f64 * 13.0;
            let Some(v) = v.filter(|v| *v > 0.0 && v.is_finite()) else {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" fill="#888">n/a</text>"##,
                    one + 4.0,
                    y + 10.0
                );
                continue;
            };
            let xv = x(v);
            let (a, b) = if xv < one { (xv, one) } else { (one, xv) };
            let _ = writeln!(
                s,
                r#"<rect x="{a:.1}" y="{y:.1}" width="{:.1}" height="12" fill="{color}"/>"#,
                (b - a).max(1.0)
            );
            let (tx, anchor) = if xv < one {
                (a - 3.0, "end")
            } else {
                (b + 3.0, "start")
            };
            let _ = writeln!(
                s,
                r#"<text x="{tx:.1}" y="{:.1}" text-anchor="{anchor}" font-size="10">{}</text>"#,
                y + 10.0,
                num(v)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    fn ok(mbps: f64) -> Result<RunResult> {
        Ok(RunResult::new(mbps * 10.0, 0.0)
            .metric("mbps", mbps)
            .metric("cpu_us_per_mib", mbps * 5.0))
    }

    #[test]
    fn summary_takes_median_min_max_of_successes() {
        let runs = vec![ok(3.0), Err(anyhow!("x")), ok(1.0), ok(2.0)];
        assert_eq!(summary(&runs, "mbps"), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&runs, "cpu_us_per_mib"), Some((10.0, 5.0, 15.0)));
        assert_eq!(summary(&runs, "tps"), None);
        assert_eq!(summary(&[Err(anyhow!("x"))], "mbps"), None);
        let even = vec![ok(1.0), ok(2.0)];
        assert_eq!(summary(&even, "mbps"), Some((1.5, 1.0, 2.0)));
    }

    #[test]
    fn ticks_are_plain_decimals() {
        assert_eq!(tick(-2.0), "0.01");
        assert_eq!(tick(0.0), "1");
        assert_eq!(tick(2.0), "100");
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.12345), "0.123");
        assert_eq!(num(0.0), "0");
    }

    fn run(metrics: &[(&str, f64)]) -> Result<RunResult> {
        Ok(metrics
            .iter()
            .fold(RunResult::new(0.0, 0.0), |r, (k, v)| r.metric(k, *v)))
    }

    /// The report of a benchmark with both ceilings, two rr/crr workloads
    /// and the two single-stream uploads, figures chosen to divide evenly.
    fn ceiling_report() -> Report {
        let all = crate::bench::workloads(&crate::bench::tests_support::args());
        let w = |n: &str| all.iter().find(|w| w.name == n).unwrap().clone();
        let one = |ep: Vec<Result<RunResult>>, k: Vec<Result<RunResult>>| {
            let mut runs: Runs = BTreeMap::new();
            runs.insert("endpoint", ep);
            if !k.is_empty() {
                runs.insert("kernel", k);
            }
            runs
        };
        vec![
            (
                w("upload-0pct"),
                one(
                    vec![run(&[("mbps", 579.2), ("cpu_us_per_mib", 16384.0)])],
                    vec![run(&[("mbps", 2000.0)])],
                ),
            ),
            (
                w("iperf3-up-P1-txoff"),
                one(
                    vec![run(&[("mbps", 1042.56), ("cpu_us_per_mib", 8192.0)])],
                    vec![],
                ),
            ),
            (
                w("rr-32conn"),
                one(
                    vec![run(&[
                        ("seg_pairs_per_sec", 120_000.0),
                        ("cpu_us_per_seg_pair", 6.25),
                    ])],
                    // The kernel's figures play no part.
                    vec![run(&[("seg_pairs_per_sec", 900_000.0)])],
                ),
            ),
            (
                w("crr-16w"),
                one(
                    vec![run(&[
                        ("seg_pairs_per_sec", 170_000.0),
                        ("cpu_us_per_seg_pair", 4.0),
                    ])],
                    vec![],
                ),
            ),
            (
                w("ceiling-60B"),
                one(
                    vec![
                        run(&[("frames_per_sec", 180_000.0), ("server_us_per_frame", 6.0)]),
                        run(&[
                            ("frames_per_sec", 200_000.0),
                            ("server_us_per_frame", 5.0),
                            ("frames_per_cpu_sec", 200_000.0),
                        ]),
                        run(&[("frames_per_sec", 220_000.0), ("server_us_per_frame", 4.0)]),
                        Err(anyhow!("a failed run does not count")),
                    ],
                    vec![],
                ),
            ),
            (
                w("ceiling-1514B"),
                one(
                    vec![run(&[
                        ("frames_per_sec", 100_000.0),
                        ("server_us_per_frame", 8.0),
                    ])],
                    vec![],
                ),
            ),
        ]
    }

    #[test]
    fn profiles_split_the_first_profiled_run_per_unit() {
        let all = crate::bench::workloads(&crate::bench::tests_support::args());
        let w = all.iter().find(|w| w.name == "rr-1conn").unwrap().clone();
        let profiled = |total: f64, user: f64| {
            let mut r = run(&[("cpu_us_per_txn", total)]).unwrap();
            r.detail = json!({ "profile": { "samples": 100, "shares": {
                "bridge_and_client": 0.5, "napi": 0.5 - user, "user": user } } });
            Ok(r)
        };
        let mut runs: Runs = BTreeMap::new();
        // The first run with a profile counts, not the median.
        runs.insert(
            "endpoint",
            vec![run(&[("cpu_us_per_txn", 99.0)]), profiled(10.0, 0.2)],
        );
        runs.insert("kernel", vec![profiled(16.0, 0.0), profiled(1.0, 0.0)]);
        let lines = profile_lines(&vec![(w, runs)]);
        let ep = lines.iter().find(|l| l.starts_with("rr-1conn")).unwrap();
        let cells: Vec<&str> = ep.split_whitespace().collect();
        // workload, server, total, then the parts in Part::ALL's order.
        let part = |p: Part| cells[3 + Part::ALL.iter().position(|q| *q == p).unwrap()];
        assert_eq!(cells[2], "10.0");
        assert_eq!(part(Part::BridgeAndClient), "5.00");
        assert_eq!(part(Part::Napi), "3.00");
        assert_eq!(part(Part::Wait), "0");
        assert_eq!(part(Part::User), "2.00");
        assert_eq!(cells.len(), 3 + Part::ALL.len() + 1);
        assert!(lines
            .iter()
            .any(|l| l.contains("kernel") && l.contains("16.0")));
        // 10 µs less its 20 % userspace against the kernel's 16.
        assert!(lines
            .iter()
            .any(|l| l.contains("8.00 µs/transaction, 0.50x")));
        // Nothing profiled: no lines at all.
        assert!(profile_lines(&ceiling_report()).is_empty());
    }

    #[test]
    fn ceiling_comparisons_are_derived_from_the_medians() {
        let rows = ceiling_rows(&ceiling_report());
        let get = |n: &str| rows.iter().find(|r| r.workload == n).unwrap();
        assert_eq!(rows.len(), 4);
        // 120,000 segment pairs/s against the median 200,000 frames/s; per
        // CPU-second 5.0 µs/frame over 6.25 µs/pair.
        let rr = get("rr-32conn");
        assert_eq!(rr.ceiling, "ceiling-60B");
        assert_eq!(rr.ceiling_value, 200_000.0);
        assert!((rr.share - 0.6).abs() < 1e-12);
        assert!((rr.cpu_share.unwrap() - 0.8).abs() < 1e-12);
        assert!(!rr.best);
        // 170,000 / 200,000 = 0.85 >= 0.8; 5.0 / 4.0 = 1.25: the best.
        let crr = get("crr-16w");
        assert!((crr.share - 0.85).abs() < 1e-12);
        assert!((crr.cpu_share.unwrap() - 1.25).abs() < 1e-12);
        assert!(crr.best && crr.goal == 0.8);
        // 100,000 frames/s x 1448 B x 8 = 1158.4 Mbit/s; 1042.56 of it is
        // 90 %. 8192 µs/MiB = 8192 x 1448 / 2^20 = 11.3125 µs per MSS, so
        // 8.0 / 11.3125 = 0.70718 per CPU-second.
        let ip = get("iperf3-up-P1-txoff");
        assert_eq!(ip.ceiling, "ceiling-1514B");
        assert!((ip.ceiling_value - 1158.4).abs() < 1e-9);
        assert!((ip.share - 0.9).abs() < 1e-12);
        assert!((ip.cpu_share.unwrap() - 8.0 / 11.3125).abs() < 1e-12);
        assert!(ip.best && ip.goal == 0.9);
        // 579.2 / 1158.4 = 0.5; 16384 µs/MiB = 22.625 µs per MSS.
        let up = get("upload-0pct");
        assert!((up.share - 0.5).abs() < 1e-12);
        assert!((up.cpu_share.unwrap() - 8.0 / 22.625).abs() < 1e-12);
        assert!(!up.best);
        // Without the ceilings there is nothing to compare with.
        let without: Report = ceiling_report()
            .into_iter()
            .filter(|(w, _)| !w.name.starts_with("ceiling"))
            .collect();
        assert!(ceiling_rows(&without).is_empty());
    }

    #[test]
    fn ceiling_comparisons_reach_the_json_and_the_chart() {
        let report = ceiling_report();
        let doc = to_json(1, &json!({}), &report);
        let c = doc["ceiling_comparisons"].as_array().unwrap();
        assert_eq!(c.len(), 4);
        let crr = c.iter().find(|r| r["workload"] == "crr-16w").unwrap();
        assert_eq!(crr["met"], true);
        assert_eq!(crr["best"], true);
        assert_eq!(crr["share"], 0.85);
        let rr = c.iter().find(|r| r["workload"] == "rr-32conn").unwrap();
        assert_eq!(rr["met"], false);
        // The ceiling's own row: endpoint figures, no kernel.
        let ceil = doc["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "ceiling-60B")
            .unwrap();
        assert_eq!(ceil["metrics"][0]["endpoint"]["median"], 200_000.0);
        assert_eq!(ceil["metrics"][0]["server_cpu"]["endpoint"]["median"], 5.0);
        assert!(ceil["metrics"][0]["kernel"].is_null());
        assert_eq!(ceil["metrics"][1]["key"], "frames_per_cpu_sec");
        assert_eq!(ceil["metrics"][1]["endpoint"]["median"], 200_000.0);
        let svg = chart_svg(&report);
        assert!(svg.contains("* crr-16w / ceiling-60B (goal 80 %)"), "{svg}");
        assert!(svg.contains("iperf3-up-P1-txoff / ceiling-1514B (goal 90 %)"));
        assert!(svg.contains(">0.850<") && svg.contains(">1.25<"), "{svg}");
        // The ceilings themselves are no endpoint/kernel row.
        assert!(!svg.contains(">ceiling-60B ("));
    }

    #[test]
    fn chart_is_svg_with_a_row_per_workload() {
        let args = crate::bench::tests_support::args();
        let ws = crate::bench::workloads(&args);
        let mut report: Report = Vec::new();
        for w in ws.into_iter().take(3) {
            let mut runs: Runs = BTreeMap::new();
            runs.insert("endpoint", vec![ok(50.0)]);
            runs.insert("kernel", vec![ok(100.0), Err(anyhow!("x"))]);
            report.push((w, runs));
        }
        report.push((
            crate::bench::workloads(&args).pop().unwrap(),
            BTreeMap::new(),
        ));
        let svg = chart_svg(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("upload-").count(), 3);
        assert!(svg.contains(">0.500<"), "{svg}");
        assert!(svg.contains("n/a"));
        let doc = to_json(1, &json!({}), &report);
        assert_eq!(
            doc["workloads"][0]["metrics"][0]["ratio_endpoint_kernel"],
            0.5
        );
        assert_eq!(
            doc["workloads"][0]["metrics"][0]["server_cpu"]["ratio_endpoint_kernel"],
            0.5
        );
    }
}
