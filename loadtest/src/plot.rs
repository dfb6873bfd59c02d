//! Latency distribution plot: latency against percentile (log-scaled tail), as a PNG.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers DejaVu Sans (or $DOZE_LOADTEST_FONT) once; false when no font could be loaded,
/// in which case plots are drawn without any text.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let path = std::env::var("DOZE_LOADTEST_FONT").unwrap_or_else(|_| DEFAULT_FONT.into());
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                match plotters::style::register_font("sans-serif", FontStyle::Normal, bytes) {
                    Ok(()) => true,
                    Err(_) => {
                        eprintln!("warning: font {path} is not usable: plot has no labels");
                        false
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "warning: font {path}: {e}: plot has no labels (install fonts-dejavu-core)"
                );
                false
            }
        }
    })
}

/// x = -log10(1 - q): 0 -> 0 %, 1 -> 90 %, 2 -> 99 %, 3 -> 99.9 % ...
fn pct_label(x: &f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    if *x < 0.5 {
        format!("{q:.0}%")
    } else {
        let decimals = (x.round() as i64 - 2).max(0) as usize;
        format!("{q:.decimals$}%")
    }
}

pub fn latency_plot(path: &Path, title: &str, h: &Histogram<u64>) -> Result<()> {
    let text = font_ready();
    // Tail depth: enough to show the max for this sample count, at most 99.999 %.
    let n = h.len().max(2) as f64;
    let x_max = n.log10().clamp(1.0, 5.0);
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let x = x_max * f64::from(i) / 400.0;
            let q = (1.0 - 10f64.powf(-x)).min(1.0);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    let y_max = (h.max() as f64 / 1000.0 * 1.08).max(0.01);

    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let caption = format!(
        "{title}: n={} p50={:.2} p95={:.2} p99={:.2} max={:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.95) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).margin_right(50);
    if text {
        builder
            .caption(caption, ("sans-serif", 20))
            .x_label_area_size(45)
            .y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(e)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("percentile")
            .y_desc("latency (ms)")
            .x_labels(x_max.ceil() as usize + 1)
            .x_label_formatter(&pct_label)
            .label_style(("sans-serif", 15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(e)?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(e)?;
    // Mark p50 / p95 / p99 with dots.
    let marks: Vec<(f64, f64)> = [0.5, 0.95, 0.99]
        .iter()
        .map(|&q: &f64| (-(1.0 - q).log10(), h.value_at_quantile(q) as f64 / 1000.0))
        .filter(|(x, _)| *x <= x_max)
        .collect();
    chart
        .draw_series(marks.into_iter().map(|p| Circle::new(p, 5, RED.filled())))
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
