//! One table across benchmark reports: the same model on several backends (and machines), with
//! PyTorch's figures for the same model beside them, and the ratios the seed's claim is about.

use std::fmt::Write as _;
use std::path::Path;

use brainfloat_gpt::ModelSize;
use brainfloat_precision::{PrecisionPolicy, Preset};
use serde::Deserialize;

use brainfloat_bench::{BenchReport, mib, read_json};

use crate::error::ReportError;

/// Step times of the same model in PyTorch, as `scripts/pytorch_reference.py --json` writes
/// them (or as quoted from elsewhere).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PytorchReference {
    /// PyTorch's version.
    pub torch: String,
    /// Whether the model ran through `torch.compile` (`--compile`); absent in older files.
    #[serde(default)]
    pub compiled: bool,
    /// Tokens per optimizer step.
    pub tokens_per_step: usize,
    /// Per preset (`fp32`, `autocast`, `bf16`), in the presets' order.
    pub presets: std::collections::BTreeMap<Preset, PytorchPreset>,
}

/// PyTorch's figures for one preset.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PytorchPreset {
    /// Median step time in milliseconds.
    pub step_time_ms_median: f64,
    /// Tokens per second at that median.
    pub tokens_per_sec: f64,
}

impl PytorchReference {
    /// `PyTorch 2.9.0 eager` or `PyTorch 2.9.0 torch.compile`.
    pub fn label(&self) -> String {
        let version = self.torch.split('+').next().unwrap_or(&self.torch);
        let mode = if self.compiled {
            "torch.compile"
        } else {
            "eager"
        };
        format!("PyTorch {version} {mode}")
    }

    /// Reads `scripts/pytorch_reference.py`'s JSON.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        Ok(read_json(path)?)
    }
}

/// Markdown: one row per backend, model and preset (step time, tokens/s, peak memory, val loss,
/// MFU), then per backend and model the ratios bf16/fp32 and bf16/autocast of step time and peak
/// memory (the presets may come from separate reports, one preset each), then PyTorch's rows
/// (eager and compiled, as given), and each backend's bf16 tokens/s over each PyTorch's.
pub fn comparison_markdown(reports: &[BenchReport], pytorch: &[PytorchReference]) -> String {
    let mut md = String::from(
        "| backend | model | preset | step time (ms) | tokens/s | peak memory (MiB) | val loss | MFU |\n\
         |---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for report in reports {
        for p in &report.presets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | {} | {:.4} | {:.1}% |",
                report.backend,
                report.model.size,
                p.preset,
                p.step_time_ms.median,
                p.tokens_per_sec,
                p.memory.peak_bytes.map_or("–".into(), |b| format!(
                    "{:.1}",
                    b as f64 / f64::from(1 << 20)
                )),
                p.val_loss,
                p.mfu * 100.0,
            );
        }
    }
    for reference in pytorch {
        for (preset, figures) in &reference.presets {
            let _ = writeln!(
                md,
                "| {} | – | {preset} | {:.1} | {:.1} | – | – | – |",
                reference.label(),
                figures.step_time_ms_median,
                figures.tokens_per_sec
            );
        }
    }
    md.push_str(
        "\n| backend | model | bf16 / fp32 step time | bf16 / autocast step time | bf16 / autocast \
         peak memory | peak memory measured as |\n|---|---|---:|---:|---:|---|\n",
    );
    let mut groups: Vec<(&str, ModelSize)> = Vec::new();
    for report in reports {
        let key = (report.backend.as_str(), report.model.size);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (backend, size) in groups {
        let presets: Vec<&brainfloat_bench::PresetResult> = reports
            .iter()
            .filter(|r| r.backend == backend && r.model.size == size)
            .flat_map(|r| &r.presets)
            .collect();
        let figure = |preset: Preset, of: fn(&brainfloat_bench::PresetResult) -> Option<f64>| {
            let preset = PrecisionPolicy::preset(preset);
            presets
                .iter()
                .find(|p| p.preset == preset)
                .and_then(|p| of(p))
        };
        let time = |p: &brainfloat_bench::PresetResult| Some(p.step_time_ms.median);
        let memory = |p: &brainfloat_bench::PresetResult| p.memory.peak_bytes.map(|b| b as f64);
        let _ = writeln!(
            md,
            "| {backend} | {size} | {} | {} | {} | {} |",
            ratio(figure(Preset::Bf16, time), figure(Preset::Fp32, time)),
            ratio(figure(Preset::Bf16, time), figure(Preset::Autocast, time)),
            ratio(
                figure(Preset::Bf16, memory),
                figure(Preset::Autocast, memory)
            ),
            presets
                .first()
                .map_or("", |p| p.memory.peak_measure.as_str()),
        );
    }
    for reference in pytorch {
        let time = |preset| {
            reference
                .presets
                .get(&preset)
                .map(|p| p.step_time_ms_median)
        };
        let _ = writeln!(
            md,
            "| {} | – | {} | {} | – | – |",
            reference.label(),
            ratio(time(Preset::Bf16), time(Preset::Fp32)),
            ratio(time(Preset::Bf16), time(Preset::Autocast)),
        );
    }
    if !pytorch.is_empty() {
        md.push_str(
            "
| backend | model | bf16 tokens/s over |",
        );
        for reference in pytorch {
            let _ = write!(md, " {} bf16 |", reference.label());
        }
        md.push_str(
            "
|---|---|---|",
        );
        md.push_str(&"---:|".repeat(pytorch.len()));
        md.push('\n');
        for report in reports {
            let Some(bf16) = report
                .presets
                .iter()
                .find(|p| p.preset == PrecisionPolicy::bf16())
            else {
                continue;
            };
            let _ = write!(md, "| {} | {} | |", report.backend, report.model.size);
            for reference in pytorch {
                let theirs = (reference.presets.get(&Preset::Bf16)).map(|p| p.tokens_per_sec);
                let _ = write!(md, " {} |", ratio(Some(bf16.tokens_per_sec), theirs));
            }
            md.push('\n');
        }
    }
    md.push_str(&estimate_table(reports));
    md
}

/// Per report and preset, the memory check's estimate beside the measured peak; empty when no
/// report carries an estimate.
fn estimate_table(reports: &[BenchReport]) -> String {
    let mut rows = String::new();
    for report in reports {
        for p in &report.presets {
            let (Some(estimate), Some(peak)) = (p.memory.estimated_bytes, p.memory.peak_bytes)
            else {
                continue;
            };
            let _ = writeln!(
                rows,
                "| {} | {} | {} | {} | {} | {} | {} | {:+.1}% |",
                report.backend,
                report.model.size,
                report.model.params,
                report.model.tokens_per_step,
                p.preset,
                mib(Some(peak)),
                mib(Some(estimate)),
                100.0 * (estimate as f64 / peak as f64 - 1.0)
            );
        }
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "\n| backend | model | parameters | tokens per step | preset | measured peak (MiB) | estimate \
         (MiB) | estimate − peak |\n|---|---|---|---:|---|---:|---:|---:|\n{rows}"
    )
}

/// `a / b` to three decimals, `–` when either is unknown.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.3}", a / b),
        _ => "–".into(),
    }
}
