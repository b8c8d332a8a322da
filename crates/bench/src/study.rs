//! The convergence study: every preset trained from the same seeds on the same data, its final
//! validation loss as mean ± standard deviation over the seeds, and its difference to fp32
//! paired by seed (same initial weights, same batches), so that what the seeds share cancels.

use std::path::{Path, PathBuf};
use std::time::Instant;

use brainfloat_gpt::{LanguageModel, ModelSize};
use brainfloat_precision::PrecisionPolicy;
use brainfloat_trainer::{TrainConfig, TrainError, TrainerBuilder};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, read_json};
use crate::report::write_json_and_markdown;
use crate::short_run::short_run_config;
use crate::stats::mean_and_sd;

/// What to train.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Precision policies, in report order; the first is the reference of the differences.
    pub presets: Vec<PrecisionPolicy>,
    /// Seeds of the initial weights (and of stochastic rounding).
    pub seeds: Vec<u64>,
    /// Optimizer steps per run (the schedule's warmdown keeps its share of the config's).
    pub steps: usize,
    /// Evaluate every this many steps, and after the last.
    pub eval_every: usize,
    /// The machine in words, for the report.
    pub machine: String,
    /// The command line, for the report.
    pub command: String,
}

/// One preset trained from one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRun {
    /// The precision policy.
    pub preset: PrecisionPolicy,
    /// `train.seed`.
    pub seed: u64,
    /// `(step, training loss)` of every step, from 1.
    pub train: Vec<(usize, f64)>,
    /// `(step, validation loss)` of every evaluation.
    pub val: Vec<(usize, f64)>,
    /// Wall time of the run, evaluations included.
    pub seconds: f64,
}

impl StudyRun {
    /// The validation loss after the last step.
    pub fn final_val_loss(&self) -> f64 {
        self.val.last().map_or(f64::NAN, |v| v.1)
    }
}

/// Every run of a study, with what it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyReport {
    /// The command, for the report.
    pub command: String,
    /// The machine, for the report.
    pub machine: String,
    /// Model size.
    pub model: ModelSize,
    /// Optimizer steps per run.
    pub steps: usize,
    /// Tokens per optimizer step.
    pub tokens_per_step: usize,
    /// Validation tokens per evaluation.
    pub val_tokens: usize,
    /// The presets, in order; the first is the reference.
    pub presets: Vec<PrecisionPolicy>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// One run per preset and seed.
    pub runs: Vec<StudyRun>,
}

/// Trains every preset from every seed (`config` gives model, data and schedule); `progress`
/// hears of each run as it ends. Runs go to `output.dir/study/<preset>-seed<seed>`.
pub fn run_study<M: LanguageModel>(
    config: &TrainConfig,
    device: &Device,
    options: &StudyOptions,
    mut progress: impl FnMut(&StudyRun),
) -> Result<StudyReport, TrainError> {
    let mut runs = Vec::new();
    for preset in &options.presets {
        for &seed in &options.seeds {
            let folder = format!("study/{preset}-seed{seed}");
            let mut run_config = short_run_config(config, options.steps, &folder);
            run_config.train.precision = *preset;
            run_config.train.seed = seed;
            let run = train_one::<M>(run_config, device, options.eval_every)?;
            progress(&run);
            runs.push(run);
        }
    }
    Ok(StudyReport {
        command: options.command.clone(),
        machine: options.machine.clone(),
        model: config.model.size,
        steps: options.steps,
        tokens_per_step: config.train.batch_size * config.train.seq_len,
        val_tokens: config.eval.tokens,
        presets: options.presets.clone(),
        seeds: options.seeds.clone(),
        runs,
    })
}

fn train_one<M: LanguageModel>(
    config: TrainConfig,
    device: &Device,
    eval_every: usize,
) -> Result<StudyRun, TrainError> {
    let (preset, seed, steps) = (
        config.train.precision,
        config.train.seed,
        config.train.steps,
    );
    let started = Instant::now();
    let mut trainer = TrainerBuilder::<M>::new(config).build(device)?;
    let (mut train, mut val) = (Vec::with_capacity(steps), Vec::new());
    for step in 1..=steps {
        train.push((step, trainer.train_step()?.loss));
        if step == steps || (eval_every > 0 && step % eval_every == 0) {
            val.push((step, trainer.evaluate()?.val_loss));
        }
    }
    Ok(StudyRun {
        preset,
        seed,
        train,
        val,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl StudyReport {
    /// The runs of `preset`, in seed order.
    pub fn runs_of(&self, preset: PrecisionPolicy) -> impl Iterator<Item = &StudyRun> + '_ {
        self.runs.iter().filter(move |r| r.preset == preset)
    }

    /// Writes `<stem>.json` and `<stem>.md` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        write_json_and_markdown(dir, stem, self, &self.to_markdown(&format!("{stem}.svg")))
    }

    /// Reads a report written by [`write`](Self::write).
    pub fn read(path: &Path) -> Result<Self, BenchError> {
        read_json(path)
    }

    /// The table: per preset, the final validation loss over the seeds (mean ± standard
    /// deviation) and its difference to the first preset's, paired by seed; `figure` is the
    /// curves' SVG beside the Markdown.
    pub fn to_markdown(&self, figure: &str) -> String {
        let reference = self
            .presets
            .first()
            .copied()
            .unwrap_or(PrecisionPolicy::fp32());
        let finals = |preset: PrecisionPolicy| -> Vec<f64> {
            self.runs_of(preset).map(StudyRun::final_val_loss).collect()
        };
        let mut text = format!(
            "# Convergence: the presets over {} seeds\n\n\
             Command: `{}`\n\n\
             Machine: {}. Model `{}`, {} optimizer steps of {} tokens, the schedule's warmdown \
             at its share of the config's; validation on {} tokens every evaluation. Each seed \
             sets the initial weights (and stochastic rounding's bits); every preset sees the \
             same batches in the same order.\n\n\
             | preset | final val loss, mean ± sd | − {reference}, mean ± sd (paired by seed) | per seed | minutes per run |\n\
             |---|---:|---:|---|---:|\n",
            self.seeds.len(),
            self.command,
            self.machine,
            self.model,
            self.steps,
            self.tokens_per_step,
            self.val_tokens,
        );
        let reference_finals = finals(reference);
        for preset in &self.presets {
            let values = finals(*preset);
            let (mean, sd) = mean_and_sd(&values);
            let differences: Vec<f64> = values
                .iter()
                .zip(&reference_finals)
                .map(|(v, r)| v - r)
                .collect();
            let (dmean, dsd) = mean_and_sd(&differences);
            let per_seed = values
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(", ");
            let minutes = self.runs_of(*preset).map(|r| r.seconds).sum::<f64>()
                / values.len().max(1) as f64
                / 60.0;
            text.push_str(&format!(
                "| {preset} | {mean:.4} ± {sd:.4} | {dmean:+.4} ± {dsd:.4} | {per_seed} | {minutes:.1} |\n"
            ));
        }
        text.push_str(&format!(
            "\n![validation and training loss per preset, mean and ± one standard deviation over \
             the seeds]({figure})\n"
        ));
        text
    }
}
