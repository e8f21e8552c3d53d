//! `--plot FILE.svg`: a picture of a sweep to paste into a report. Three
//! panels against the offered rate: the share of requests with valid
//! replies; offset θ p1/p50/p99; round-trip δ p50/p99 (log scale, whole
//! decades).
//! Steps the load generator could not offer in full are left out (they say
//! nothing about the server) and the caption says how many.

use std::path::Path;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

use crate::report::{RunReport, StepReport};

/// Legend text of each series (tests look for these).
pub const SERIES: [&str; 6] = [
    "valid replies %",
    "θ p1",
    "θ p50",
    "θ p99",
    "δ p50",
    "δ p99",
];

const WIDTH: u32 = 960;
const HEIGHT: u32 = 1080;

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Draws `run` into an SVG file at `path`.
pub fn write_svg(run: &RunReport, path: &Path) -> Result<(), String> {
    draw(run, path).map_err(|e| e.to_string())
}

fn series(steps: &[&StepReport], f: impl Fn(&StepReport) -> Option<f64>) -> Vec<(f64, f64)> {
    steps
        .iter()
        .filter_map(|s| f(s).map(|v| (s.offered_rate, v)))
        .collect()
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

fn draw(run: &RunReport, path: &Path) -> PlotResult {
    let mut steps: Vec<&StepReport> = run.steps.iter().filter(|s| !s.limited).collect();
    steps.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    let left_out = run.steps.len() - steps.len();

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "ntp-loadgen → {} ({} thread{}, {} clients){}",
        run.target,
        run.config.threads,
        if run.config.threads == 1 { "" } else { "s" },
        run.config.clients,
        if left_out > 0 {
            format!(" — {left_out} generator-limited step(s) left out")
        } else {
            String::new()
        }
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let panels = root.split_evenly((3, 1));

    let (x_lo, x_hi) = bounds(steps.iter().map(|s| s.offered_rate)).unwrap_or((1.0, 10.0));
    let pad = ((x_hi - x_lo) * 0.05).max(x_hi * 0.05);
    let (x_lo, x_hi) = ((x_lo - pad).max(0.0), x_hi + pad);

    // Panel 1: valid replies.
    let valid = series(&steps, |s| Some(s.shares.valid_pct));
    let y_lo = bounds(valid.iter().map(|p| p.1)).map_or(0.0, |(lo, _)| (lo - 1.0).max(0.0).floor());
    let mut chart = ChartBuilder::on(&panels[0])
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, y_lo..100.5)?;
    chart
        .configure_mesh()
        .x_desc("offered rate (req/s)")
        .x_label_formatter(&rate_label)
        .y_desc("valid replies (%)")
        .draw()?;
    line(&mut chart, &valid, SERIES[0], BLUE)?;
    legend(&mut chart)?;

    // Panel 2: offset percentiles (signed, linear).
    let theta = [
        (series(&steps, |s| s.theta_us.p1_us), SERIES[1], GREEN),
        (series(&steps, |s| s.theta_us.p50_us), SERIES[2], BLACK),
        (series(&steps, |s| s.theta_us.p99_us), SERIES[3], RED),
    ];
    let (t_lo, t_hi) =
        bounds(theta.iter().flat_map(|(v, _, _)| v.iter().map(|p| p.1))).unwrap_or((-1.0, 1.0));
    let pad = ((t_hi - t_lo) * 0.1).max(0.1);
    let mut chart = ChartBuilder::on(&panels[1])
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, (t_lo - pad)..(t_hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (req/s)")
        .x_label_formatter(&rate_label)
        .y_desc("offset θ (µs)")
        .draw()?;
    for (data, name, color) in &theta {
        line(&mut chart, data, name, *color)?;
    }
    legend(&mut chart)?;

    // Panel 3: round-trip percentiles (log).
    let rtt = [
        (series(&steps, |s| s.rtt_us.p50_us), SERIES[4], BLACK),
        (series(&steps, |s| s.rtt_us.p99_us), SERIES[5], RED),
    ];
    let (r_lo, r_hi) = bounds(
        rtt.iter()
            .flat_map(|(v, _, _)| v.iter().map(|p| p.1.max(0.001))),
    )
    .unwrap_or((1.0, 10.0));
    // Whole decades, so the axis has at least two labelled lines.
    let r_lo = 10f64.powf(r_lo.log10().floor());
    let r_hi = 10f64.powf(r_hi.log10().ceil()).max(r_lo * 10.0);
    let mut chart = ChartBuilder::on(&panels[2])
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, (r_lo..r_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered rate (req/s)")
        .x_label_formatter(&rate_label)
        .y_desc("round trip δ (µs)")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    for (data, name, color) in &rtt {
        let clamped: Vec<(f64, f64)> = data.iter().map(|&(x, y)| (x, y.max(r_lo))).collect();
        line(&mut chart, &clamped, name, *color)?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// A rate as axis text: 250k, 1.5M.
fn rate_label(v: &f64) -> String {
    if *v >= 1e6 {
        format!("{}M", (*v / 1e5).round() / 10.0)
    } else if *v >= 1e3 {
        format!("{}k", (*v / 1e2).round() / 10.0)
    } else {
        format!("{}", v.round())
    }
}

fn line<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    data: &[(f64, f64)],
    name: &str,
    color: RGBColor,
) -> PlotResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(
        data.iter()
            .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
    )?;
    Ok(())
}

fn legend<'a, X, Y>(chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>) -> PlotResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_label_compactly() {
        assert_eq!(rate_label(&250_000.0), "250k");
        assert_eq!(rate_label(&1_500_000.0), "1.5M");
        assert_eq!(rate_label(&12_500.0), "12.5k");
        assert_eq!(rate_label(&500.0), "500");
    }
}
