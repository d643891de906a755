//! The results of `cargo xtask bench`: every run's metrics, the table on
//! stdout (median [min–max] per server, endpoint/kernel ratio, server CPU
//! per unit of work), the JSON file and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};

use crate::bench::Workload;
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

pub fn print_table(report: &Report) {
    let cell = |s: Option<(f64, f64, f64)>| match s {
        Some((m, lo, hi)) => format!("{} [{}–{}]", num(m), num(lo), num(hi)),
        None => "failed".to_owned(),
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
            println!(
                "{:<23} {:<16} {:>26} {:>26} {:>9}  {}",
                if i == 0 { w.name.as_str() } else { "" },
                format!("{} {arrow}", m.unit),
                cell(e),
                cell(k),
                r,
                cpu
            );
        }
    }
    println!("(↑ higher is better, ↓ lower is better; server CPU per unit: lower is better)");
    if report.iter().any(|(w, _)| w.name.ends_with("-offload")) {
        println!(
            "(*-offload: the kernel with Linux's default offloads on both veth ends (TSO/GSO); \
             the endpoint with the client veth's tx checksum offload off, which its XDP \
             program needs, the rest default. *-txoff: tx off on both ends for both.)"
        );
    }
    println!();
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
    })
}

/// One bar pair of the chart.
struct ChartRow {
    label: String,
    metric: Option<f64>,
    cpu: Option<f64>,
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
    let rows: Vec<ChartRow> = report
        .iter()
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
            })
        })
        .collect();
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
    let height = top + row_h * rows.len().max(1) as f64 + 60.0;
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
    let bottom = top + row_h * rows.len().max(1) as f64;
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
        let y0 = top + row_h * i as f64;
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
