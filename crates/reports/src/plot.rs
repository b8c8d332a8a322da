//! The pictures, as SVG: loss curves of several runs, the lost-update probe over training, and
//! the memory distribution of a benchmark.

use std::path::Path;

use brainfloat_precision::PrecisionPolicy;
use brainfloat_trainer::{MetricsLine, ParamGroup};
use burn::tensor::FloatDType;
use plotters::prelude::*;

use brainfloat_bench::{BenchReport, Part, RowDtype, StudyReport, StudyRun, mean_and_sd};

use crate::error::ReportError;

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
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for line in read_metrics(path)? {
            let step = line.step as f64;
            if let Some(loss) = line.loss {
                train.push((step, loss));
            }
            if let Some(loss) = line.val_loss {
                val.push((step, loss));
            }
        }
        Ok(Self {
            label: run_label(path),
            train,
            val,
        })
    }

    /// Training losses of steps 1, 2, … (a benchmark's), with a final validation loss.
    pub fn from_losses(label: &str, losses: &[f64], val_loss: Option<f64>) -> Self {
        let train: Vec<(f64, f64)> = (1..).map(f64::from).zip(losses.iter().copied()).collect();
        let val = val_loss
            .map(|v| vec![(train.len() as f64, v)])
            .unwrap_or_default();
        Self {
            label: label.to_string(),
            train,
            val,
        }
    }
}

/// The name of the folder of a metrics file: its run's label.
fn run_label(path: &Path) -> String {
    path.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Every line of a metrics file.
fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, ReportError> {
    Ok(MetricsLine::read_all(path)?)
}

/// One run's lost-update probe: per parameter group, `(step, fraction lost)`.
pub struct LostUpdateCurves {
    /// Legend label (the run's folder).
    pub label: String,
    /// One series per group of [`ParamGroup::ALL`], in that order.
    pub groups: Vec<Vec<(f64, f64)>>,
}

impl LostUpdateCurves {
    /// Reads the `lost_updates` of every probed step in a metrics file.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let mut groups = vec![Vec::new(); ParamGroup::ALL.len()];
        for line in read_metrics(path)? {
            let Some(fractions) = &line.lost_updates else {
                continue;
            };
            for (group, series) in ParamGroup::ALL.iter().zip(&mut groups) {
                if let Some(Some(fraction)) = fractions.get(group.name()) {
                    series.push((line.step as f64, *fraction));
                }
            }
        }
        if groups.iter().all(Vec::is_empty) {
            return Err(ReportError::File {
                path: path.to_path_buf(),
                problem: "no lost_updates in the metrics (was eval.lost_update_every 0?)".into(),
            });
        }
        Ok(Self {
            label: run_label(path),
            groups,
        })
    }
}

/// Smallest fraction the log axis of [`plot_lost_updates`] shows; a step that lost nothing is
/// drawn there.
pub const LOST_FLOOR: f64 = 1e-7;

/// One panel per run, one line per parameter group: the fraction of each step's non-zero updates
/// below half a bf16 ulp of their weight, on a log axis.
pub fn plot_lost_updates(runs: &[LostUpdateCurves], out: &Path) -> Result<(), ReportError> {
    let error = plot_error(out);
    let max_step = runs
        .iter()
        .flat_map(|r| r.groups.iter().flatten())
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let height = 60 + 300 * runs.len().max(1) as u32;
    let root = SVGBackend::new(out, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let root = root
        .titled(
            "lost-update probe: share of non-zero updates below half a bf16 ulp",
            ("sans-serif", 20),
        )
        .map_err(|e| error(e.to_string()))?;
    for (run, area) in runs.iter().zip(root.split_evenly((runs.len().max(1), 1))) {
        let mut chart = ChartBuilder::on(&area)
            .caption(&run.label, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..max_step, (LOST_FLOOR..1.0).log_scale())
            .map_err(|e| error(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("fraction lost")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(|e| error(e.to_string()))?;
        for ((group, series), color) in ParamGroup::ALL.iter().zip(&run.groups).zip(PALETTE) {
            let points = series.iter().map(|&(x, y)| (x, y.max(LOST_FLOOR)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| error(e.to_string()))?
                .label(group.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| error(e.to_string()))?;
    }
    root.present().map_err(|e| error(e.to_string()))
}

/// One horizontal bar per preset of a benchmark, split into weights, gradients, optimizer state
/// and activations; fp32 segments solid, bf16 light, the measured activations (dtypes mixed)
/// grey.
pub fn plot_distribution(report: &BenchReport, out: &Path) -> Result<(), ReportError> {
    let error = plot_error(out);
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let total = |p: &brainfloat_bench::PresetResult| {
        p.distribution.iter().map(|r| mib(r.bytes)).sum::<f64>()
    };
    let widest = report.presets.iter().map(total).fold(1.0, f64::max);
    let n = report.presets.len().max(1);
    let root = SVGBackend::new(out, (900, 140 + 90 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "memory of one training step by part and dtype (MiB)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..widest * 1.45, 0.0..n as f64)
        .map_err(|e| error(e.to_string()))?;
    let names: Vec<String> = report
        .presets
        .iter()
        .map(|p| p.preset.to_string())
        .collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let index = (y - 0.5).round();
            let centred = (y - 0.5 - index).abs() < 1e-6;
            match names.get(index as usize) {
                Some(name) if centred && index >= 0.0 => name.clone(),
                _ => String::new(),
            }
        })
        .x_desc("MiB")
        .draw()
        .map_err(|e| error(e.to_string()))?;
    for (row, preset) in report.presets.iter().enumerate() {
        let (y0, y1) = (row as f64 + 0.2, row as f64 + 0.8);
        let mut x = 0.0;
        for part in Part::ALL {
            for r in preset.distribution.iter().filter(|r| r.part == part) {
                let width = mib(r.bytes);
                let color = PART_COLORS[part as usize];
                let style = match r.dtype {
                    RowDtype::Float(FloatDType::BF16) => color.mix(0.45).filled(),
                    RowDtype::Mixed => color.mix(0.7).filled(),
                    RowDtype::Float(_) => color.filled(),
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y0), (x + width, y1)],
                        style,
                    )))
                    .map_err(|e| error(e.to_string()))?;
                x += width;
            }
        }
    }
    for (part, color) in Part::ALL.iter().zip(PART_COLORS) {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(|e| error(e.to_string()))?
            .label(match part {
                Part::Activations => "activations (measured; dtypes mixed)".to_string(),
                _ => format!("{} (light: bf16)", part.name()),
            })
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(e.to_string()))?;
    root.present().map_err(|e| error(e.to_string()))
}

/// Colours of [`Part::ALL`], in order.
const PART_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(127, 127, 127),
];

/// Draws every run's training loss (line) and validation loss (points) in one chart, and below
/// it each run's training loss minus the first run's, step by step (the curves of precision
/// presets overlap at the top; the bottom shows by how much they differ).
pub fn plot_losses(runs: &[Curves], out: &Path, title: &str) -> Result<(), ReportError> {
    let error = plot_error(out);
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
    draw_differences(runs, &bottom, max_step).map_err(&error)?;
    root.present().map_err(|e| error(e.to_string()))
}

/// The error of drawing into `out`, from what plotters said.
fn plot_error(out: &Path) -> impl Fn(String) -> ReportError + '_ {
    move |problem| ReportError::Plot {
        path: out.to_path_buf(),
        problem,
    }
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

/// Steps a training-loss curve of [`plot_convergence`] is averaged over (at most a fifth of the
/// run): single steps of a small batch are too noisy to compare presets by.
pub const CONVERGENCE_SMOOTHING: usize = 20;

/// One preset's curve over the seeds: per x, the value of every seed.
type SeedCurves = Vec<(f64, Vec<f64>)>;

/// The convergence study in two panels: each preset's validation loss over training, and its
/// training loss minus the reference preset's (paired by seed, a moving mean over
/// [`CONVERGENCE_SMOOTHING`] steps); each a line for the mean over the seeds and a band of ± one
/// standard deviation.
pub fn plot_convergence(report: &StudyReport, out: &Path) -> Result<(), ReportError> {
    let error = plot_error(out);
    let reference = report
        .presets
        .first()
        .copied()
        .unwrap_or(PrecisionPolicy::fp32());
    let window = CONVERGENCE_SMOOTHING.min(report.steps / 5).max(1);
    // Per preset: (step, values over the seeds) for the validation loss and the smoothed
    // training-loss difference to the reference.
    let series = |preset: PrecisionPolicy, of: &dyn Fn(&StudyRun) -> Vec<(usize, f64)>| {
        let runs: Vec<Vec<(usize, f64)>> = report.runs_of(preset).map(of).collect();
        let steps: Vec<usize> = runs
            .first()
            .map(|r| r.iter().map(|p| p.0).collect())
            .unwrap_or_default();
        steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                (
                    *step as f64,
                    runs.iter().map(|r| r[i].1).collect::<Vec<f64>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let reference_train: Vec<Vec<f64>> = report
        .runs_of(reference)
        .map(|r| moving_mean(&r.train, window))
        .collect();
    let val = |r: &StudyRun| r.val.clone();
    let difference = |r: &StudyRun| {
        let seed = report.seeds.iter().position(|s| *s == r.seed).unwrap_or(0);
        moving_mean(&r.train, window)
            .iter()
            .zip(reference_train.get(seed).into_iter().flatten())
            .enumerate()
            .map(|(i, (v, w))| (i + window, v - w))
            .collect()
    };
    let panels: Vec<Vec<SeedCurves>> =
        [&val as &dyn Fn(&StudyRun) -> Vec<(usize, f64)>, &difference]
            .into_iter()
            .map(|of| report.presets.iter().map(|p| series(*p, of)).collect())
            .collect();
    let root = SVGBackend::new(out, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    let (top, bottom) = root.split_vertically(450);
    let titles = [
        "validation loss (mean ± sd over seeds)".to_string(),
        format!("training loss − {reference}'s, paired by seed ({window}-step mean)"),
    ];
    for ((area, title), panel) in [top, bottom].iter().zip(&titles).zip(&panels) {
        draw_bands(area, title, &report.presets, panel, report.steps as f64).map_err(&error)?;
    }
    root.present().map_err(|e| error(e.to_string()))
}

/// Means of `window` consecutive losses, one per full window.
fn moving_mean(curve: &[(usize, f64)], window: usize) -> Vec<f64> {
    curve
        .windows(window)
        .map(|w| w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        .collect()
}

/// One chart: per preset, the mean line and a ± sd band of `(x, values over seeds)`.
fn draw_bands(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    presets: &[PrecisionPolicy],
    panel: &[SeedCurves],
    max_x: f64,
) -> Result<(), String> {
    let stats: Vec<Vec<(f64, f64, f64)>> = panel
        .iter()
        .map(|points| {
            points
                .iter()
                .map(|(x, values)| {
                    let (mean, sd) = mean_and_sd(values);
                    (*x, mean, if sd.is_nan() { 0.0 } else { sd })
                })
                .collect()
        })
        .collect();
    let (lo, hi) = stats
        .iter()
        .flatten()
        .filter(|p| p.1.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1 - p.2), hi.max(p.1 + p.2))
        });
    // Nothing finite to draw (a diverged run): a unit range, so that the axes still draw.
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let margin = ((hi - lo) * 0.05).max(1e-4);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_x, (lo - margin)..(hi + margin))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .draw()
        .map_err(|e| e.to_string())?;
    for ((preset, points), color) in presets.iter().zip(&stats).zip(PALETTE.iter().cycle()) {
        let color = *color;
        let band: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.0, p.1 + p.2))
            .chain(points.iter().rev().map(|p| (p.0, p.1 - p.2)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                color.mix(0.15).filled(),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), color))
            .map_err(|e| e.to_string())?
            .label(preset.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
