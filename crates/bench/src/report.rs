//! The benchmark's report: the seed's Table 3.1 columns per preset, the memory distribution and
//! the matmul micro-benchmark, as JSON (everything) and Markdown (for people).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use brainfloat_gpt::{Arch, ModelSize};
use brainfloat_precision::PrecisionPolicy;
use serde::{Deserialize, Serialize};

use crate::distribution::{DistributionRow, Part, part_bytes};
use crate::error::{BenchError, read_json};
use crate::matmul::MatmulResult;
use crate::peak::Peak;
use crate::stats::Spread;

/// The model and batch every preset ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Architecture (reports before it was recorded are the record's).
    #[serde(default)]
    pub arch: Arch,
    /// Size name (`tiny`, `small`, `speedrun`).
    pub size: ModelSize,
    /// Parameters.
    pub params: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Tokens per optimizer step.
    pub tokens_per_step: usize,
    /// Sequence length.
    pub seq_len: usize,
    /// Training FLOPs per token, counted analytically (`GptConfig::training_flops_per_token`).
    pub flops_per_token: u64,
}

/// Memory of one preset.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MemoryResult {
    /// Peak bytes by the measure that sees this backend's tensors (`peak_measure`): the heap
    /// peak on flex, the resident-set growth on libtorch's CPU, the device pool on Burn's CUDA.
    #[serde(default)]
    pub peak_bytes: Option<u64>,
    /// Which measure `peak_bytes` is.
    #[serde(default)]
    pub peak_measure: String,
    /// Heap bytes the preset held at its peak: what it keeps between steps plus the most a step
    /// added on top (the counting allocator's figures; `None` without it).
    pub heap_peak_bytes: Option<u64>,
    /// Heap bytes the preset keeps between steps (weights, optimizer state, caches).
    pub heap_resident_bytes: Option<u64>,
    /// Growth of the process's peak resident set while the preset was built and warmed up.
    pub rss_growth_bytes: Option<u64>,
    /// Bytes the device's allocator reserved after the preset's steps, on backends that report
    /// it (GPU pools); `None` on CPU.
    pub device_reserved_bytes: Option<u64>,
    /// The peak the memory check estimated before anything was allocated
    /// (`MemoryEstimate::training`); absent from reports made before it existed.
    #[serde(default)]
    pub estimated_bytes: Option<u64>,
}

/// Everything measured for one preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresetResult {
    /// The precision policy.
    pub preset: PrecisionPolicy,
    /// Wall time of the timed steps, in milliseconds.
    pub step_time_ms: Spread,
    /// Tokens per second at the median step time.
    pub tokens_per_sec: f64,
    /// Achieved GFLOP/s: analytic FLOPs per token × tokens per second.
    pub achieved_gflops: f64,
    /// Achieved over the report's peak.
    pub mfu: f64,
    /// Validation loss after all steps (equal for every preset).
    pub val_loss: f64,
    /// Memory.
    pub memory: MemoryResult,
    /// Bytes per part and dtype.
    pub distribution: Vec<DistributionRow>,
    /// Training loss of every step, warm-up included.
    pub losses: Vec<f64>,
    /// This preset's figures over the baseline's (`step_time`, `tokens_per_sec`,
    /// `peak_memory`, `val_loss`, `mfu`); filled by [`BenchReport::compute_ratios`].
    #[serde(default)]
    pub ratios: BTreeMap<String, f64>,
}

impl PresetResult {
    /// The figures that get a ratio to the baseline, by name.
    fn ratio_figures(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("step_time", Some(self.step_time_ms.median)),
            ("tokens_per_sec", Some(self.tokens_per_sec)),
            ("peak_memory", self.memory.peak_bytes.map(|b| b as f64)),
            ("val_loss", Some(self.val_loss)),
            ("mfu", Some(self.mfu)),
        ]
    }
}

/// A whole benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The command that produced it.
    pub command: String,
    /// Backend name.
    pub backend: String,
    /// The machine, in words.
    pub machine: String,
    /// Model and batch.
    pub model: ModelInfo,
    /// Untimed steps per preset before the timed ones.
    pub warmup_steps: usize,
    /// Timed steps per preset.
    pub timed_steps: usize,
    /// The preset ratios are taken against.
    pub baseline: PrecisionPolicy,
    /// The peak behind MFU of presets whose matmuls run in fp32.
    pub peak: Peak,
    /// The peak behind MFU of presets whose matmuls run in bf16 (`autocast`, `bf16`); `peak`
    /// where absent (reports from before it was measured).
    #[serde(default)]
    pub bf16_peak: Option<Peak>,
    /// One entry per preset, in run order.
    pub presets: Vec<PresetResult>,
    /// The matmul micro-benchmark.
    pub matmuls: Vec<MatmulResult>,
    /// Pictures drawn from this report, linked at the end of the Markdown.
    #[serde(default)]
    pub figures: Vec<Figure>,
}

/// A picture that belongs to a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// What it shows.
    pub title: String,
    /// File name, relative to the report.
    pub file: String,
}

impl BenchReport {
    /// The result of `preset`.
    pub fn preset(&self, preset: PrecisionPolicy) -> Option<&PresetResult> {
        self.presets.iter().find(|p| p.preset == preset)
    }

    /// Fills every preset's ratios to the baseline. A baseline that is not among the presets
    /// becomes the first preset, and the report names it: `--presets bf16,bf16-sr` under the
    /// default baseline `autocast` gives ratios to `bf16`, said so.
    pub fn compute_ratios(&mut self) {
        let Some(base) = self.preset(self.baseline).or(self.presets.first()) else {
            return;
        };
        let baseline = base.ratio_figures();
        self.baseline = base.preset;
        for preset in &mut self.presets {
            preset.ratios = preset
                .ratio_figures()
                .iter()
                .zip(&baseline)
                .filter_map(|((name, value), (_, base))| {
                    Some((name.to_string(), (*value)? / (*base)?))
                })
                .collect();
        }
    }

    /// The report as Markdown: the table, the distribution, the matmuls and the plots' links.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.model;
        let _ = writeln!(md, "# Precision benchmark: {}\n", self.preset_names());
        let _ = writeln!(md, "Command: `{}`\n", self.command);
        let _ = writeln!(
            md,
            "Machine: {} (backend `{}`). Model: `{}`{}, {} parameters, vocabulary {}, {} tokens \
             per step (sequence {}), {:.1} MFLOP per token (analytic). Per preset: {} warm-up \
             steps, then {} timed steps, the presets interleaved step by step (round r starts \
             with preset r mod {}). Ratios are to `{}`.\n",
            self.machine,
            self.backend,
            m.size,
            match m.arch {
                Arch::Record => "",
                Arch::Gpt2 => " as GPT-2 (`model.arch = \"gpt2\"`)",
            },
            m.params,
            m.vocab_size,
            m.tokens_per_step,
            m.seq_len,
            m.flops_per_token as f64 / 1e6,
            self.warmup_steps,
            self.timed_steps,
            self.presets.len(),
            self.baseline,
        );
        match &self.bf16_peak {
            Some(bf16) => {
                let _ = writeln!(
                    md,
                    "MFU peaks: fp32 matmuls {:.1} GFLOP/s ({}); bf16 matmuls {:.1} GFLOP/s ({}). \
                     Each preset's MFU is taken against the peak of its matmul dtype.\n",
                    self.peak.gflops, self.peak.source, bf16.gflops, bf16.source
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "MFU peak: {:.1} GFLOP/s, {}.\n",
                    self.peak.gflops, self.peak.source
                );
            }
        }
        md.push_str(&self.main_table());
        md.push_str(&self.distribution_table());
        md.push_str(&self.matmul_table());
        for figure in &self.figures {
            let _ = writeln!(md, "![{}]({})\n", figure.title, figure.file);
        }
        md
    }

    fn preset_names(&self) -> String {
        let names: Vec<String> = self.presets.iter().map(|p| p.preset.to_string()).collect();
        names.join(" vs ")
    }

    fn main_table(&self) -> String {
        let mut md = String::from(
            "## Time, memory, loss, utilisation\n\n\
             | preset | step time median (ms) | p25–p75 (ms) | × | tokens/s | × | peak memory \
             (MiB) | × | val loss | × | GFLOP/s | MFU | × |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for p in &self.presets {
            let ratio = |name: &str| p.ratios.get(name).map_or("–".into(), |r| format!("{r:.3}"));
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1}–{:.1} | {} | {:.1} | {} | {} | {} | {:.4} | {} | {:.2} | {:.2}% | {} |",
                p.preset,
                p.step_time_ms.median,
                p.step_time_ms.p25,
                p.step_time_ms.p75,
                ratio("step_time"),
                p.tokens_per_sec,
                ratio("tokens_per_sec"),
                mib(p.memory.peak_bytes),
                ratio("peak_memory"),
                p.val_loss,
                ratio("val_loss"),
                p.achieved_gflops,
                p.mfu * 100.0,
                ratio("mfu"),
            );
        }
        let figure = |name: &str, bytes: fn(&MemoryResult) -> Option<u64>| {
            let values: Vec<String> = self
                .presets
                .iter()
                .filter_map(|p| Some(format!("{} {}", p.preset, mib(Some(bytes(&p.memory)?)))))
                .collect();
            if values.is_empty() {
                String::new()
            } else {
                format!(" {name} (MiB): {}.", values.join(", "))
            }
        };
        let measure = self
            .presets
            .first()
            .map_or("", |p| p.memory.peak_measure.as_str());
        let _ = write!(
            md,
            "\n× = ratio to the baseline. Peak memory = {measure}.{}{}{}{}",
            figure(
                "Peak heap (what a preset keeps between steps + the most one step allocated on \
                 top, counting global allocator)",
                |m| m.heap_peak_bytes
            ),
            figure("Heap kept between steps", |m| m.heap_resident_bytes),
            figure("Peak RSS growth while built and warmed up", |m| m
                .rss_growth_bytes),
            figure("Device pool reserved", |m| m.device_reserved_bytes),
        );
        let estimates: Vec<String> = self
            .presets
            .iter()
            .filter_map(|p| {
                let (estimate, peak) = (p.memory.estimated_bytes?, p.memory.peak_bytes?);
                Some(format!(
                    "{} {} ({:.2}× the measured peak)",
                    p.preset,
                    mib(Some(estimate)),
                    estimate as f64 / peak as f64
                ))
            })
            .collect();
        if !estimates.is_empty() {
            let _ = write!(
                md,
                " The memory check's estimate, made before anything was allocated (MiB): {}.",
                estimates.join(", ")
            );
        }
        md.push_str("\n\n");
        md
    }

    fn distribution_table(&self) -> String {
        let mut md = String::from(
            "## Where the memory is (bytes per dtype per part)\n\n\
             | preset | part | dtype | tensors | MiB | share |\n|---|---|---|---:|---:|---:|\n",
        );
        for p in &self.presets {
            let total: u64 = p.distribution.iter().map(|r| r.bytes).sum();
            for row in &p.distribution {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.1}% |",
                    p.preset,
                    row.part.name(),
                    row.dtype,
                    row.tensors,
                    mib(Some(row.bytes)),
                    100.0 * row.bytes as f64 / total.max(1) as f64
                );
            }
        }
        md.push_str(
            "\nActivations: bytes the autodiff graph holds at the end of the forward pass, \
             measured like the peak memory above (an allocator cannot tell their dtypes apart).\n\n",
        );
        let summary: Vec<String> = self
            .presets
            .iter()
            .map(|p| {
                let parts: Vec<String> = Part::ALL
                    .iter()
                    .map(|&part| {
                        format!(
                            "{} {}",
                            part.name(),
                            mib(Some(part_bytes(&p.distribution, part)))
                        )
                    })
                    .collect();
                format!("- `{}`: {} MiB", p.preset, parts.join(", "))
            })
            .collect();
        md.push_str(&summary.join("\n"));
        md.push_str("\n\n");
        md
    }

    fn matmul_table(&self) -> String {
        let mut md = String::from(
            "## Matmul micro-benchmark (the model's shapes)\n\n\
             | product | m × k × n | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |\n\
             |---|---|---:|---:|---:|\n",
        );
        for r in &self.matmuls {
            let s = &r.shape;
            let _ = writeln!(
                md,
                "| {} | {} × {} × {} | {:.1} | {} | {} |",
                s.name,
                s.m,
                s.k,
                s.n,
                r.fp32_gflops,
                r.bf16_gflops.map_or("–".into(), |g| format!("{g:.1}")),
                r.bf16_speedup().map_or("–".into(), |x| format!("{x:.2}")),
            );
        }
        md.push('\n');
        md
    }

    /// Writes `<stem>.json` and `<stem>.md` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        write_json_and_markdown(dir, stem, self, &self.to_markdown())
    }

    /// Reads a report written by [`write`](Self::write).
    pub fn read(path: &Path) -> Result<Self, BenchError> {
        read_json(path)
    }
}

/// Bytes as MiB with one decimal, `–` when unknown.
pub fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("–".into(), |b| {
        format!("{:.1}", b as f64 / (1u64 << 20) as f64)
    })
}

/// Writes `value` as `<stem>.json` and `markdown` as `<stem>.md` into `dir` (created if
/// missing), each atomically; returns their paths. Every report is written this way.
pub fn write_json_and_markdown<T: Serialize>(
    dir: &Path,
    stem: &str,
    value: &T,
    markdown: &str,
) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join(format!("{stem}.json"));
    let md = dir.join(format!("{stem}.md"));
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    brainfloat_files::write_atomic(&json, (text + "\n").as_bytes())?;
    brainfloat_files::write_atomic(&md, markdown.as_bytes())?;
    Ok((json, md))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str, step_ms: f64) -> PresetResult {
        PresetResult {
            preset: name.parse().unwrap(),
            step_time_ms: Spread::of(&[step_ms]).unwrap(),
            tokens_per_sec: 1000.0 / step_ms,
            achieved_gflops: 1.0,
            mfu: 0.5,
            val_loss: 4.0,
            memory: MemoryResult::default(),
            distribution: Vec::new(),
            losses: Vec::new(),
            ratios: BTreeMap::new(),
        }
    }

    fn report(baseline: &str, presets: Vec<PresetResult>) -> BenchReport {
        BenchReport {
            command: "cargo xtask bench".into(),
            backend: "flex".into(),
            machine: "test machine".into(),
            model: ModelInfo {
                arch: Arch::Record,
                size: ModelSize::Tiny,
                params: 1,
                vocab_size: 1,
                tokens_per_step: 1,
                seq_len: 1,
                flops_per_token: 1,
            },
            warmup_steps: 1,
            timed_steps: 1,
            baseline: baseline.parse().unwrap(),
            peak: Peak::stated(1.0),
            bf16_peak: None,
            presets,
            matmuls: Vec::new(),
            figures: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_to_the_baseline_or_to_the_first_preset_named_as_such() {
        let mut present = report("bf16", vec![preset("fp32", 300.0), preset("bf16", 100.0)]);
        present.compute_ratios();
        assert_eq!(present.baseline, PrecisionPolicy::bf16());
        assert_eq!(present.presets[0].ratios["step_time"], 3.0);

        let mut absent = report(
            "autocast",
            vec![preset("bf16", 200.0), preset("bf16-sr", 100.0)],
        );
        absent.compute_ratios();
        assert_eq!(absent.baseline, PrecisionPolicy::bf16());
        assert_eq!(absent.presets[1].ratios["step_time"], 0.5);
        assert!(absent.to_markdown().contains("Ratios are to `bf16`."));
    }
}
