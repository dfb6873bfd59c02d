//! Latency recording (HdrHistogram, microseconds), error accounting, progress and output.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::common::Common;

/// How many driver errors are printed; the rest are only counted.
const PRINTED_ERRORS: u64 = 5;

pub fn new_hist() -> Histogram<u64> {
    // 1 us .. 1 h, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// The error and its causes, skipping causes whose text the message already shows
/// (driver errors often repeat their source in their own message).
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if out.contains(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&t);
    }
    out
}

/// Counters shared by all workers of one run.
#[derive(Default)]
pub struct Shared {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error and prints the first few to stderr.
    pub fn error(&self, what: &str, e: &anyhow::Error) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= PRINTED_ERRORS {
            let msg = format!("{what}: {}", chain(e));
            eprintln!("error #{n}: {msg}");
            if let Ok(mut v) = self.first_errors.lock() {
                v.push(msg);
            }
        } else if n == PRINTED_ERRORS + 1 {
            eprintln!("(further errors are counted, not printed)");
        }
    }

    pub fn first_errors(&self) -> Vec<String> {
        self.first_errors
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    pub fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Prints progress to stderr once per second until dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(what: &'static str, shared: Arc<Shared>, doze_pid: Option<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last_ok = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let ok = shared.ok_count();
                let err = shared.error_count();
                let rss = doze_pid
                    .and_then(|p| crate::common::rss_kib(p).ok())
                    .map(|k| format!(" doze_rss={} MiB", k / 1024))
                    .unwrap_or_default();
                eprintln!(
                    "[{what} {:>4.0}s] ok={ok} (+{}/s) errors={err}{rss}",
                    t0.elapsed().as_secs_f64(),
                    ok - last_ok
                );
                last_ok = ok;
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentile summary of a histogram, in milliseconds.
pub fn summary(h: &Histogram<u64>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("samples".into(), json!(h.len()));
    if h.is_empty() {
        for k in [
            "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms",
        ] {
            m.insert(k.into(), Value::Null);
        }
        return m;
    }
    m.insert("min_ms".into(), json!(ms(h.min())));
    m.insert("mean_ms".into(), json!(h.mean() / 1000.0));
    for (k, q) in [
        ("p50_ms", 0.50),
        ("p90_ms", 0.90),
        ("p95_ms", 0.95),
        ("p99_ms", 0.99),
        ("p999_ms", 0.999),
    ] {
        m.insert(k.into(), json!(ms(h.value_at_quantile(q))));
    }
    m.insert("max_ms".into(), json!(ms(h.max())));
    m
}

fn fmt_ms(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

/// Assembles the result, prints the human summary, writes JSON and the plot.
pub fn finish(
    c: &Common,
    scenario: &str,
    headline: &str,
    mut extra: Map<String, Value>,
    hist: &Histogram<u64>,
    shared: &Shared,
) -> Result<Value> {
    let mut out = Map::new();
    out.insert("scenario".into(), json!(scenario));
    out.insert("label".into(), json!(c.label));
    out.insert("via".into(), json!(c.via));
    out.insert("round".into(), json!(c.round));
    out.insert("target".into(), json!(c.target));
    let errors = shared.error_count();
    out.insert("ok".into(), json!(shared.ok_count()));
    out.insert("errors".into(), json!(errors));
    out.insert("first_errors".into(), json!(shared.first_errors()));
    for (k, v) in summary(hist) {
        out.insert(k, v);
    }
    out.append(&mut extra);
    let out = Value::Object(out);

    println!(
        "== {scenario}{}",
        c.label
            .as_ref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default()
    );
    if !headline.is_empty() {
        println!("{headline}");
    }
    println!(
        "ok={} errors={}  latency ms: p50={} p95={} p99={} max={}",
        shared.ok_count(),
        errors,
        fmt_ms(out.get("p50_ms")),
        fmt_ms(out.get("p95_ms")),
        fmt_ms(out.get("p99_ms")),
        fmt_ms(out.get("max_ms")),
    );
    write_outputs(c, scenario, &out, Some(hist))?;
    if shared.ok_count() == 0 {
        anyhow::bail!("{scenario}: nothing succeeded ({errors} errors)");
    }
    Ok(out)
}

pub fn write_outputs(
    c: &Common,
    scenario: &str,
    out: &Value,
    hist: Option<&Histogram<u64>>,
) -> Result<()> {
    if let Some(p) = &c.json {
        let s = serde_json::to_string_pretty(out)?;
        std::fs::write(p, s + "\n").with_context(|| format!("write {}", p.display()))?;
    }
    if let (Some(p), Some(h)) = (&c.plot, hist) {
        let title = format!(
            "{scenario}{}{}",
            c.via
                .as_ref()
                .map(|v| format!(" via {v}"))
                .unwrap_or_default(),
            c.label
                .as_ref()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default()
        );
        if h.is_empty() {
            eprintln!("no samples: plot {} not written", p.display());
        } else {
            crate::plot::latency_plot(p, &title, h)
                .with_context(|| format!("plot {}", p.display()))?;
        }
    }
    Ok(())
}
