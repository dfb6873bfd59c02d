//! `report`: one table from a directory of JSON results; `sysbench-import`: sysbench's text
//! output as a JSON result of the same shape.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::common::{Common, median};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Directory holding the *.json results.
    #[arg(long)]
    pub results: PathBuf,
}

#[derive(Args, Debug)]
pub struct SysbenchImportArgs {
    /// sysbench's stdout of one `run`.
    #[arg(long)]
    pub input: PathBuf,
    /// Threads used (stored in the JSON).
    #[arg(long)]
    pub threads: Option<u32>,
}

fn num_after(line: &str, key: &str) -> Option<f64> {
    let rest = line.trim().strip_prefix(key)?;
    rest.split_whitespace()
        .next()?
        .trim_end_matches('s')
        .parse()
        .ok()
}

/// Parses the summary of `sysbench ... run`.
pub fn parse_sysbench(text: &str) -> Result<Value> {
    let mut qps = None;
    let mut queries = None;
    let mut p95 = None;
    let mut avg = None;
    let mut max = None;
    let mut min = None;
    let mut errors = None;
    let mut time = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("queries:") {
            // "queries:   168023 (20999.41 per sec.)"
            queries = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok());
            qps = rest
                .split('(')
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok());
        }
        p95 = p95.or_else(|| num_after(t, "95th percentile:"));
        avg = avg.or_else(|| num_after(t, "avg:"));
        max = max.or_else(|| num_after(t, "max:"));
        min = min.or_else(|| num_after(t, "min:"));
        errors = errors.or_else(|| num_after(t, "ignored errors:"));
        time = time.or_else(|| num_after(t, "total time:"));
    }
    let Some(qps) = qps else {
        bail!("no `queries: N (X per sec.)` line in sysbench output");
    };
    Ok(json!({
        "scenario": "sysbench",
        "qps": qps,
        "ok": queries,
        "errors": errors,
        "p95_ms": p95,
        "mean_ms": avg,
        "max_ms": max,
        "min_ms": min,
        "duration_s": time,
        "p50_ms": null,
        "p99_ms": null,
    }))
}

pub fn sysbench_import(c: &Common, a: &SysbenchImportArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&a.input).with_context(|| format!("read {}", a.input.display()))?;
    let mut v = parse_sysbench(&text).with_context(|| format!("parse {}", a.input.display()))?;
    if let Value::Object(m) = &mut v {
        m.insert("label".into(), json!(c.label));
        m.insert("via".into(), json!(c.via));
        m.insert("round".into(), json!(c.round));
        m.insert("target".into(), json!(c.target));
        m.insert("threads".into(), json!(a.threads));
    }
    println!(
        "== sysbench{}: {:.0} qps, p95 {} ms",
        c.label
            .as_ref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default(),
        v.get("qps").and_then(Value::as_f64).unwrap_or(0.0),
        v.get("p95_ms")
            .and_then(Value::as_f64)
            .map(|x| format!("{x:.2}"))
            .unwrap_or("-".into())
    );
    crate::stats::write_outputs(c, "sysbench", &v, None)
}

/// (metric key, shown name) per scenario.
fn metrics_for(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "relay" | "sysbench" => &[("qps", "qps"), ("p95_ms", "p95 ms")],
        "churn" => &[("qps", "conn/s"), ("p95_ms", "p95 ms")],
        "cold-start" | "mariadbd-start" => &[("p50_ms", "p50 ms"), ("max_ms", "max ms")],
        "herd" => &[
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("errors", "failed"),
            ("compute_starts", "starts"),
        ],
        "idle" => &[
            ("rss_per_session_kib", "RSS KiB/sess"),
            ("open", "sessions"),
            ("errors", "failed"),
        ],
        "projects" => &[
            ("resumes_per_s", "resumes/s"),
            ("qps", "conn/s"),
            ("failed_connections", "failed"),
            ("doze_rss_max_kib", "RSS max KiB"),
        ],
        _ => &[("qps", "qps"), ("p95_ms", "p95 ms")],
    }
}

fn rank(scenario: &str) -> u32 {
    match scenario {
        "relay" => 0,
        "churn" => 1,
        "sysbench" => 2,
        "mariadbd-start" | "cold-start" => 3,
        "herd" => 4,
        "idle" => 5,
        "projects" => 6,
        _ => 7,
    }
}

/// Sort key that orders "relay-c8" before "relay-c64".
fn natural(s: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for ch in s.chars().chain(std::iter::once('\0')) {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else {
            if !digits.is_empty() {
                out.push_str(&format!("{digits:0>10}"));
                digits.clear();
            }
            out.push(ch);
        }
    }
    out
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e12 => format!("{x:.0}"),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

pub fn report(a: &ReportArgs) -> Result<()> {
    let mut results = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&a.results)
        .with_context(|| format!("read {}", a.results.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for p in entries {
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("scenario").is_some() => results.push(v),
            Ok(_) => {}
            Err(e) => eprintln!("warning: skipping {}: {e}", p.display()),
        }
    }
    // label -> (scenario of the group, via -> results)
    let mut groups: BTreeMap<String, (String, BTreeMap<String, Vec<&Value>>)> = BTreeMap::new();
    for r in &results {
        let scenario = r.get("scenario").and_then(Value::as_str).unwrap_or("?");
        let label = r
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or(scenario)
            .to_string();
        let via = r
            .get("via")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let g = groups
            .entry(label)
            .or_insert_with(|| (scenario.to_string(), BTreeMap::new()));
        // A start group mixes mariadbd-start (direct) with cold-start (doze): show the latter's metrics.
        if rank(scenario) < rank(&g.0) || scenario == "cold-start" {
            g.0 = scenario.to_string();
        }
        g.1.entry(via).or_default().push(r);
    }
    let mut order: Vec<_> = groups.keys().cloned().collect();
    order.sort_by_key(|l| (rank(&groups[l].0), natural(l)));

    let vias = ["direct", "haproxy", "doze"];
    let header = format!(
        "{:<16} {:<13} {:>10} {:>10} {:>10} {:>11} {:>12} {:>6}",
        "scenario", "metric", "direct", "haproxy", "doze", "doze/direct", "doze/haproxy", "rounds"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for label in order {
        let (scenario, by_via) = &groups[&label];
        for (key, name) in metrics_for(scenario) {
            let mut vals = BTreeMap::new();
            let mut rounds = 0;
            for via in vias {
                let rs = by_via.get(via).map(Vec::as_slice).unwrap_or(&[]);
                rounds = rounds.max(rs.len());
                let mut xs: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.get(*key).and_then(Value::as_f64))
                    .collect();
                vals.insert(via, median(&mut xs));
            }
            let doze = vals.get("doze").copied().flatten();
            let ratio = |other: Option<f64>| match (doze, other) {
                (Some(d), Some(o)) if o != 0.0 => format!("{:.2}", d / o),
                _ => "-".into(),
            };
            println!(
                "{:<16} {:<13} {:>10} {:>10} {:>10} {:>11} {:>12} {:>6}",
                label,
                name,
                fmt(vals.get("direct").copied().flatten()),
                fmt(vals.get("haproxy").copied().flatten()),
                fmt(doze),
                ratio(vals.get("direct").copied().flatten()),
                ratio(vals.get("haproxy").copied().flatten()),
                rounds
            );
        }
        for (via, rs) in by_via {
            if !vias.contains(&via.as_str()) {
                eprintln!(
                    "note: {label}: {} result(s) with via={via} not shown",
                    rs.len()
                );
            }
        }
    }
    println!("values are medians over rounds; ratios are doze divided by the other column");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "SQL statistics:
    queries performed:
        read:                            168023
        total:                           168023
    transactions:                        168023 (20999.41 per sec.)
    queries:                             168023 (20999.41 per sec.)
    ignored errors:                      0      (0.00 per sec.)
    reconnects:                          0      (0.00 per sec.)

General statistics:
    total time:                          8.0012s
    total number of events:              168023

Latency (ms):
         min:                                    0.10
         avg:                                    0.38
         max:                                   12.03
         95th percentile:                        0.80
         sum:                                63789.77
";

    #[test]
    fn sysbench_text() -> Result<()> {
        let v = parse_sysbench(OUT)?;
        assert_eq!(v["qps"].as_f64(), Some(20999.41));
        assert_eq!(v["p95_ms"].as_f64(), Some(0.80));
        assert_eq!(v["max_ms"].as_f64(), Some(12.03));
        assert_eq!(v["errors"].as_f64(), Some(0.0));
        assert_eq!(v["duration_s"].as_f64(), Some(8.0012));
        assert!(parse_sysbench("nothing").is_err());
        Ok(())
    }

    #[test]
    fn natural_order() {
        assert!(natural("relay-c8") < natural("relay-c64"));
    }
}
