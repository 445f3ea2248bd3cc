//! The load test's SVG plots: distributions as CDFs, the server's memory against the number
//! of members, forwarding rate against the raw baseline, and failed frames by kind.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

pub(crate) struct Inputs<'a> {
    pub(crate) joined: &'a [f64],
    pub(crate) rekey: &'a [f64],
    pub(crate) apply: &'a [f64],
    pub(crate) first_frame: &'a [f64],
    pub(crate) latency: &'a [f64],
    /// (members admitted, server RSS in MiB).
    pub(crate) rss_curve: &'a [(f64, f64)],
    /// While the meeting runs: (seconds, server RSS in MiB).
    pub(crate) rss_steady: &'a [(f64, f64)],
    pub(crate) failure_kinds: &'a BTreeMap<String, u64>,
    pub(crate) server_pps: f64,
    pub(crate) baseline_pps: f64,
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

const SIZE: (u32, u32) = (720, 420);

/// A CDF of `values` (ms) with its p50 and p99 in the title.
fn cdf(path: &Path, title: &str, values: &[f64]) -> Result<()> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let at = |q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let caption = format!(
        "{title} (n = {}, p50 {:.1} ms, p99 {:.1} ms)",
        v.len(),
        at(0.5),
        at(0.99)
    );
    let xmax = v.last().copied().unwrap_or(1.0).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("fraction at or below")
        .draw()
        .map_err(err)?;
    // At most about 400 points (every k-th sample, and the last): the plot looks the same
    // and the file stays small.
    let n = v.len().max(1) as f64;
    let step = v.len().div_ceil(400).max(1);
    let points: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == v.len())
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect();
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn rss(path: &Path, title: &str, x_desc: &str, curve: &[(f64, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax = curve.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymax = curve.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("server RSS (MiB)")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(curve.iter().copied(), &RED))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Horizontal bars: (label, value).
fn bars(path: &Path, title: &str, unit: &str, items: &[(String, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax = items.iter().map(|i| i.1).fold(1.0, f64::max) * 1.15;
    let n = items.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(20)
        .build_cartesian_2d(0f64..xmax, 0f64..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .disable_y_mesh()
        .y_labels(0)
        .draw()
        .map_err(err)?;
    for (i, (label, value)) in items.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.2), (*value, y + 0.8)],
                Palette99::pick(i).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{label}: {value:.0}"),
                (xmax * 0.02, y + 0.5),
                ("sans-serif", 15),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

pub(crate) fn write(dir: &Path, i: &Inputs<'_>) -> Result<()> {
    cdf(&dir.join("join_time.svg"), "Join time", i.joined)?;
    cdf(
        &dir.join("rekey.svg"),
        "Rekey: first to last member on an epoch",
        i.rekey,
    )?;
    cdf(
        &dir.join("commit_apply.svg"),
        "Applying a commit, per member",
        i.apply,
    )?;
    cdf(
        &dir.join("first_frame.svg"),
        "Admission to first decrypted frame",
        i.first_frame,
    )?;
    cdf(
        &dir.join("frame_latency.svg"),
        "Frame latency, capture to decrypted",
        i.latency,
    )?;
    rss(
        &dir.join("server_rss.svg"),
        "Server RSS against members admitted",
        "members admitted",
        i.rss_curve,
    )?;
    if i.rss_steady.len() > 1 {
        rss(
            &dir.join("server_rss_running.svg"),
            "Server RSS while the meeting runs",
            "seconds",
            i.rss_steady,
        )?;
    }
    bars(
        &dir.join("forwarding.svg"),
        "Forwarded packets per core-second",
        "packets per second of CPU",
        &[
            ("Conclave SFU".to_owned(), i.server_pps),
            ("raw UDP fan-out (sendmmsg)".to_owned(), i.baseline_pps),
        ],
    )?;
    let kinds: Vec<(String, f64)> = if i.failure_kinds.is_empty() {
        vec![("no failed frames".to_owned(), 0.0)]
    } else {
        i.failure_kinds
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect()
    };
    bars(
        &dir.join("failed_frames.svg"),
        "Frames that failed to open, by kind",
        "frames",
        &kinds,
    )?;
    Ok(())
}
