//! Latency plots as SVG (plotters, SVG backend only: pure Rust, no system
//! libraries): the percentile distribution on the usual log scale (50,
//! 90, 99, 99.9, 99.99), the achieved rate and p99 second by second, and
//! for `--find-max` each step's p99 against its offered rate.
//!
//! The same figure serves one run (one line per request kind) and a
//! comparison of runs against several targets (one line per target,
//! `qualcache-loadtest plot`, which reads the runs' `--json` reports).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde::Deserialize;

use crate::run::{Percentile, Report, Second};

/// One `--find-max` step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Offered rate, requests per second.
    pub rate: f64,
    /// p99 latency, milliseconds.
    pub p99_ms: f64,
    /// Whether the step met the SLO.
    pub held: bool,
}

/// What a figure shows.
#[derive(Debug, Clone, Default)]
pub struct Figure {
    /// Above everything.
    pub title: String,
    /// Latency distributions, by line name.
    pub distributions: Vec<(String, Vec<Percentile>)>,
    /// Second-by-second figures, by line name.
    pub timelines: Vec<(String, Vec<Second>)>,
    /// `--find-max` steps (none: no step panel).
    pub steps: Vec<Step>,
    /// The SLO's p99, milliseconds, drawn on the step panel.
    pub slo_p99_ms: Option<f64>,
}

/// What a figure needs from a `--json` report (the rest is ignored).
#[derive(Debug, Deserialize)]
pub struct Curves {
    /// By `all` and each request kind.
    pub distribution: BTreeMap<String, Vec<Percentile>>,
    /// Second by second.
    pub timeline: Vec<Second>,
}

impl Curves {
    /// Reads the curves of a report written by `run --json`.
    pub fn read(path: &Path) -> Result<Curves> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the report {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a qualcache-loadtest report with a distribution and a timeline",
                path.display()
            )
        })
    }
}

impl Figure {
    /// One run: a distribution line for all requests and one per kind.
    pub fn of_run(title: String, r: &Report) -> Figure {
        Figure {
            title,
            distributions: r
                .distribution
                .iter()
                .filter(|(_, d)| !d.is_empty())
                .map(|(k, d)| (k.clone(), d.clone()))
                .collect(),
            timelines: vec![("all requests".into(), r.timeline.clone())],
            ..Figure::default()
        }
    }

    /// Several runs side by side: each one's distribution of all requests
    /// and its timeline, named.
    pub fn compare(title: String, runs: &[(String, Curves)]) -> Figure {
        Figure {
            title,
            distributions: runs
                .iter()
                .map(|(name, c)| {
                    let all = c.distribution.get("all").cloned().unwrap_or_default();
                    (name.clone(), all)
                })
                .collect(),
            timelines: runs
                .iter()
                .map(|(name, c)| (name.clone(), c.timeline.clone()))
                .collect(),
            ..Figure::default()
        }
    }

    /// Writes the figure to `path` as SVG.
    pub fn write_svg(&self, path: &Path) -> Result<()> {
        let panels = if self.steps.is_empty() { 3 } else { 4 };
        let root = SVGBackend::new(path, (1000, 360 * panels + 40)).into_drawing_area();
        draw(self, &root, panels as usize)
            .and_then(|()| root.present().map_err(|e| anyhow!("{e}")))
            .with_context(|| format!("writing the plot {}", path.display()))
    }
}

/// x of a percentile on the log scale: decades of 1 - p (0 at 0, 1 at
/// 90, 2 at 99, 3 at 99.9 ...).
fn decades(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

/// Thousandths of a decade: the percentile axis is an integer one, whose
/// ticks can be placed at 50, 90, 99 ... (plotters places ticks of a
/// float axis only where it likes).
const MILLI: f64 = 1000.0;

fn milli_decades(percentile: f64) -> i32 {
    (decades(percentile) * MILLI).round() as i32
}

/// The percentile at `x` decades, as an axis label: 50, 90, 99, 99.9 ...
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    // 90 and 99 need no decimal, 99.9 one, 99.99 two...
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{p:.decimals$}")
}

fn draw(
    f: &Figure,
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panels: usize,
) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(&f.title, ("sans-serif", 22)).map_err(e)?;
    let areas = root.split_evenly((panels, 1));
    percentiles(f, &areas[0])?;
    over_time(
        f,
        &areas[1],
        "answers per second",
        "answers/s",
        |s| s.answered_per_s,
        |v| format!("{v:.0}"),
    )?;
    over_time(
        f,
        &areas[2],
        "p99 latency per second",
        "p99 (ms)",
        |s| s.p99_ms,
        |v| format!("{v}"),
    )?;
    if panels > 3 {
        steps(f, &areas[3])?;
    }
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A panel of the figure: its caption, margin and axis label areas.
fn panel<'a, 'b>(area: &'a Area<'b>, caption: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    builder
}

/// A positive range around `values` for a log axis, with some room.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.01..1.0;
    }
    (lo / 1.5)..(hi * 1.5).max(lo * 2.0)
}

fn percentiles(f: &Figure, area: &Area<'_>) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let xmax = f
        .distributions
        .iter()
        .flat_map(|(_, d)| d.last().map(|p| decades(p.percentile)))
        .fold(2.0f64, f64::max)
        .ceil();
    let xmax = (xmax * MILLI) as i32;
    let mut keys = vec![0, milli_decades(50.0)];
    keys.extend((1..=xmax / 1000).map(|d| d * 1000));
    let y = log_range(
        f.distributions
            .iter()
            .flat_map(|(_, d)| d.iter().map(|p| p.ms)),
    );
    let mut chart = panel(area, "latency by percentile")
        .build_cartesian_2d((0..xmax).with_key_points(keys), y.clone().log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(f64::from(*x) / MILLI))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(e)?;
    for (i, (name, d)) in f.distributions.iter().enumerate() {
        let points = d
            .iter()
            .map(|p| (milli_decades(p.percentile), p.ms.max(y.start)));
        line(&mut chart, i, name, points)?;
    }
    legend(&mut chart)
}

fn over_time(
    f: &Figure,
    area: &Area<'_>,
    caption: &str,
    y_desc: &str,
    value: impl Fn(&Second) -> f64,
    label: impl Fn(&f64) -> String,
) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let tmax = f
        .timelines
        .iter()
        .flat_map(|(_, t)| t.last().map(|s| s.t_s))
        .fold(1.0f64, f64::max);
    let ymax = f
        .timelines
        .iter()
        .flat_map(|(_, t)| t.iter().map(&value))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let mut chart = panel(area, caption)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc(y_desc)
        .y_label_formatter(&label)
        .draw()
        .map_err(e)?;
    for (i, (name, t)) in f.timelines.iter().enumerate() {
        line(&mut chart, i, name, t.iter().map(|s| (s.t_s, value(s))))?;
    }
    legend(&mut chart)
}

fn steps(f: &Figure, area: &Area<'_>) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let rates = log_range(f.steps.iter().map(|s| s.rate));
    let y = log_range(f.steps.iter().map(|s| s.p99_ms).chain(f.slo_p99_ms));
    let mut chart = panel(area, "p99 of each --find-max step")
        .build_cartesian_2d(rates.clone().log_scale(), y.clone().log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("offered rate (requests/s)")
        .y_desc("p99 (ms)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(e)?;
    let points = f.steps.iter().map(|s| (s.rate, s.p99_ms.max(y.start)));
    line(&mut chart, 0, "p99 per step (dots: held)", points)?;
    let color = Palette99::pick(0).to_rgba();
    chart
        .draw_series(f.steps.iter().map(|s| {
            let style = if s.held {
                color.filled()
            } else {
                RED.stroke_width(2)
            };
            Circle::new((s.rate, s.p99_ms.max(y.start)), 4, style)
        }))
        .map_err(e)?;
    if let Some(slo) = f.slo_p99_ms {
        chart
            .draw_series(LineSeries::new(
                [(rates.start, slo), (rates.end, slo)],
                RED.stroke_width(1),
            ))
            .map_err(e)?
            .label("SLO p99")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(1)));
    }
    legend(&mut chart)
}

/// Draws line `i` of a panel (its colour the palette's `i`th), named in
/// the legend.
fn line<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    i: usize,
    name: &str,
    points: impl Iterator<Item = (X::ValueType, Y::ValueType)>,
) -> Result<()>
where
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    let color = Palette99::pick(i).to_rgba();
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(|e| anyhow!("{e}"))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_reads_as_people_expect() {
        assert_eq!(decades(0.0), 0.0);
        assert!((decades(90.0) - 1.0).abs() < 1e-9);
        assert!((decades(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_label(0.0), "0");
        assert_eq!(percentile_label(decades(50.0)), "50");
        assert_eq!(percentile_label(1.0), "90");
        assert_eq!(percentile_label(2.0), "99");
        assert_eq!(percentile_label(4.0), "99.99");
    }
}
