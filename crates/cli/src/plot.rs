//! Loss curves from metrics files, as SVG.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// One run's curves read from its `metrics.jsonl`.
pub struct Curves {
    /// Legend label.
    pub label: String,
    /// `(step, training loss)`.
    pub train: Vec<(f64, f64)>,
    /// `(step, validation loss)`.
    pub val: Vec<(f64, f64)>,
}

impl Curves {
    /// Reads `path`; the label is the name of its folder.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("metrics {}: cannot read: {err}", path.display()))?;
        let label = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (number, line) in text.lines().enumerate() {
            let record: serde_json::Value = serde_json::from_str(line)
                .map_err(|err| format!("metrics {} line {}: {err}", path.display(), number + 1))?;
            let step = record["step"].as_f64().unwrap_or_default();
            if let Some(loss) = record["loss"].as_f64() {
                train.push((step, loss));
            }
            if let Some(loss) = record["val_loss"].as_f64() {
                val.push((step, loss));
            }
        }
        Ok(Self { label, train, val })
    }
}

/// Draws every run's training loss (line) and validation loss (points) in one chart, and below
/// it each run's training loss minus the first run's, step by step (the curves of precision
/// presets overlap at the top; the bottom shows by how much they differ).
pub fn plot_losses(runs: &[Curves], out: &PathBuf, title: &str) -> Result<(), String> {
    let error = |err: String| format!("plot {}: {err}", out.display());
    let all = || runs.iter().flat_map(|r| r.train.iter().chain(&r.val));
    let max_step = all().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let root = SVGBackend::new(out, (900, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let (top, bottom) = root.split_vertically(560);
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_step, (lo - 0.1)..(hi + 0.1))
        .map_err(|e| error(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss")
        .draw()
        .map_err(|e| error(e.to_string()))?;
    for (run, color) in runs.iter().zip(PALETTE.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(run.train.iter().copied(), color.mix(0.5)))
            .map_err(|e| error(e.to_string()))?
            .label(format!("{} train", run.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(run.val.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(|e| error(e.to_string()))?
            .label(format!("{} val", run.label))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(e.to_string()))?;
    draw_differences(runs, &bottom, max_step).map_err(error)?;
    root.present().map_err(|e| error(e.to_string()))
}

const PALETTE: [RGBColor; 6] = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];

fn draw_differences(
    runs: &[Curves],
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    max_step: f64,
) -> Result<(), String> {
    let Some(reference) = runs.first() else {
        return Ok(());
    };
    let differences: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|run| {
            run.train
                .iter()
                .zip(&reference.train)
                .map(|(a, b)| (a.0, a.1 - b.1))
                .collect()
        })
        .collect();
    let extent = differences
        .iter()
        .flatten()
        .fold(1e-4f64, |m, p| m.max(p.1.abs()));
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("training loss minus {}", reference.label),
            ("sans-serif", 16),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_step, -extent * 1.1..extent * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("difference")
        .draw()
        .map_err(|e| e.to_string())?;
    for (points, color) in differences.into_iter().zip(PALETTE.iter().cycle()) {
        chart
            .draw_series(LineSeries::new(points, color))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
