//! The built-in plugins: logs, metrics, progress, checkpoint cadence and stop-on-request.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use brainfloat_memory::MemoryReading;
use brainfloat_precision::PrecisionPolicy;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::LostUpdates;
use crate::optim::ParamGroup;
use crate::tensorboard::EventWriter;

/// Human or JSON logs through `tracing` (the subscriber is the binary's choice): the run at
/// start, every `every` steps, evaluations, checkpoints and the end.
pub struct LogPlugin {
    every: usize,
}

impl LogPlugin {
    /// Logs a step every `every` steps (and the first).
    pub fn new(every: usize) -> Self {
        Self {
            every: every.max(1),
        }
    }
}

impl Plugin for LogPlugin {
    fn on_train_start(&mut self, info: &RunInfo) -> Result<(), TrainError> {
        tracing::info!(
            params = info.num_params,
            model = %info.shape,
            mflop_per_token = format!("{:.1}", info.flops_per_token as f64 / 1e6),
            policy = %info.policy,
            tokens_per_step = info.tokens_per_step,
            from_step = info.start_step,
            steps = info.total_steps,
            dir = %info.dir.display(),
            "training"
        );
        Ok(())
    }

    fn on_step(&mut self, s: &StepStats) -> Result<Action, TrainError> {
        if s.step == 1 || s.step.is_multiple_of(self.every) {
            tracing::info!(
                step = s.step,
                loss = format!("{:.4}", s.loss),
                lr = format!("{:.3}", s.lr_multiplier),
                grad_norm = format!("{:.3}", s.grad_norm),
                ms = s.step_time.as_millis() as u64,
                tokens_per_sec = s.tokens_per_sec.round() as u64,
                "step"
            );
        }
        Ok(Action::Continue)
    }

    fn on_eval(&mut self, e: &EvalStats) -> Result<(), TrainError> {
        tracing::info!(
            step = e.step,
            val_loss = format!("{:.4}", e.val_loss),
            tokens = e.tokens,
            tokens_per_sec = format!("{:.0}", e.tokens_per_sec),
            "eval"
        );
        Ok(())
    }

    fn on_sample(&mut self, s: &SampleStats) -> Result<(), TrainError> {
        // Debug-quoted: the sample's newlines stay on the log's one line.
        tracing::info!(
            step = s.step,
            tokens_per_sec = format!("{:.0}", s.tokens_per_sec),
            "sample: {:?}",
            s.full_text()
        );
        Ok(())
    }

    fn on_checkpoint(&mut self, c: &CheckpointInfo) -> Result<(), TrainError> {
        tracing::info!(step = c.step, path = %c.path.display(), "checkpoint");
        Ok(())
    }

    fn on_train_end(&mut self, s: &RunSummary) -> Result<(), TrainError> {
        tracing::info!(
            steps = s.steps,
            val_loss = s.val_loss.map(|v| format!("{v:.4}")).unwrap_or_default(),
            tokens_per_sec = s.tokens_per_sec.round() as u64,
            seconds = format!("{:.1}", s.elapsed.as_secs_f64()),
            "done"
        );
        Ok(())
    }
}

/// One JSON line per step (`step`, `loss`, `lr`, `step_time_ms`, `tokens_per_sec`,
/// `grad_norm`, `sync_ms` of the gradient all-reduce; `skipped` on dropped steps; `lost_updates`
/// per group on probed steps; `heap_peak_bytes` and `rss_bytes` when the binary measures them,
/// [`MetricsPlugin::with_memory`]) and per evaluation (`step`, `val_loss`), appended to a file;
/// with [`MetricsPlugin::with_tensorboard`] the same values in TensorBoard's event files too.
pub struct MetricsPlugin {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    read_memory: Option<Box<dyn FnMut() -> MemoryReading>>,
    tensorboard: Option<(PathBuf, Option<EventWriter>)>,
}

impl MetricsPlugin {
    /// Appends to `path` (created if missing, so a resumed run continues the same file).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            out: None,
            read_memory: None,
            tensorboard: None,
        }
    }

    /// Also writes every line's figures into a TensorBoard event file in `dir` (a new file per
    /// run, as TensorBoard expects): each number under its key (`loss`, `val_loss`, `lr`,
    /// `tokens_per_sec`, `grad_norm`, `heap_peak_bytes`, …; a per-group figure as
    /// `lost_updates/matrices`), samples as text.
    pub fn with_tensorboard(mut self, dir: PathBuf) -> Self {
        self.tensorboard = Some((dir, None));
        self
    }

    /// Adds the memory `read_memory` returns, called once after each step, to each step's line.
    pub fn with_memory(mut self, read_memory: impl FnMut() -> MemoryReading + 'static) -> Self {
        self.read_memory = Some(Box::new(read_memory));
        self
    }

    fn write(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        let error = |err: std::io::Error| TrainError::Output {
            path: self.path.clone(),
            problem: format!("cannot write metrics: {err}"),
        };
        let out = match &mut self.out {
            Some(out) => out,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(error)?;
                drop_torn_line(&file, &self.path).map_err(error)?;
                self.out.insert(BufWriter::new(file))
            }
        };
        let text = serde_json::to_string(line).expect("a metrics line serializes");
        writeln!(out, "{text}")
            .and_then(|_| out.flush())
            .map_err(error)?;
        if let Some((dir, events)) = &mut self.tensorboard {
            let error = |err: std::io::Error| TrainError::Output {
                path: dir.clone(),
                problem: format!("cannot write TensorBoard events: {err}"),
            };
            let events = match events {
                Some(events) => events,
                None => events.insert(EventWriter::create(dir).map_err(error)?),
            };
            let value = serde_json::to_value(line).expect("a metrics line serializes");
            write_events(events, line.step, &value).map_err(error)?;
        }
        Ok(())
    }
}

/// The figures of one metrics line (its JSON object) as TensorBoard scalars and text.
fn write_events(
    events: &mut EventWriter,
    step: usize,
    line: &serde_json::Value,
) -> std::io::Result<()> {
    use serde_json::Value;
    let mut scalars = Vec::new();
    for (key, value) in line.as_object().into_iter().flatten() {
        match value {
            Value::Number(number) if key != "step" => {
                scalars.extend(number.as_f64().map(|v| (key.clone(), v)));
            }
            Value::Object(groups) => {
                for (group, value) in groups {
                    if let Some(v) = value.as_f64() {
                        scalars.push((format!("{key}/{group}"), v));
                    }
                }
            }
            Value::String(text) => events.text(step, key, text)?,
            _ => {}
        }
    }
    events.scalars(step, &scalars)
}

/// Cuts a last line that a killed writer left without its newline, so that the lines appended
/// now do not continue it.
fn drop_torn_line(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Back from the end, a block at a time, to the last newline.
    let mut end = len;
    let mut block = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(newline) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + newline as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                tracing::warn!(
                    "{}: removed a last line cut short ({} bytes) before appending",
                    path.display(),
                    len - keep
                );
            }
            return Ok(());
        }
        end = start;
    }
    file.set_len(0)
}

impl Plugin for MetricsPlugin {
    fn on_step(&mut self, s: &StepStats) -> Result<Action, TrainError> {
        let memory = self
            .read_memory
            .as_mut()
            .map(|read| read())
            .unwrap_or_default();
        let line = MetricsLine {
            step: s.step,
            loss: Some(s.loss),
            lr: Some(s.lr_multiplier),
            step_time_ms: Some(s.step_time.as_secs_f64() * 1e3),
            tokens_per_sec: Some(s.tokens_per_sec),
            grad_norm: Some(s.grad_norm),
            sync_ms: Some(s.sync_time.as_secs_f64() * 1e3),
            skipped: s.skipped,
            lost_updates: s.lost_updates.map(|probe| per_group(|g| probe.fraction(g))),
            rounded_away_expected: s
                .lost_updates
                .and_then(|probe| any_group(|g| probe.expected_fraction(g))),
            kahan_compensation: s
                .lost_updates
                .and_then(|probe| any_group(|g| probe.compensation_half_ulps(g))),
            heap_peak_bytes: memory.heap_peak_bytes,
            rss_bytes: memory.rss_bytes,
            ..MetricsLine::default()
        };
        self.write(&line)?;
        Ok(Action::Continue)
    }

    fn on_eval(&mut self, e: &EvalStats) -> Result<(), TrainError> {
        self.write(&MetricsLine {
            step: e.step,
            val_loss: Some(e.val_loss),
            val_tokens_per_sec: Some(e.tokens_per_sec),
            ..MetricsLine::default()
        })
    }

    fn on_sample(&mut self, s: &SampleStats) -> Result<(), TrainError> {
        self.write(&MetricsLine {
            step: s.step,
            sample: Some(s.full_text()),
            ..MetricsLine::default()
        })
    }
}

/// One line of `metrics.jsonl`: a training step's figures, or an evaluation's (`val_*`).
/// Written by [`MetricsPlugin`], read by `plot`; a figure a line does not have is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Optimizer steps completed.
    pub step: usize,
    /// Mean training loss of the step over micro-batches and ranks (`null` when not finite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning-rate multiplier of the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Wall time of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_time_ms: Option<f64>,
    /// This rank's tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    /// Global gradient norm (after scaling for accumulation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Time in the gradient all-reduce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ms: Option<f64>,
    /// The step's update was dropped for a non-finite loss or gradient.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// The lost-update probe: per group name, the fraction of non-zero updates lost (`null`:
    /// none was non-zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_updates: Option<BTreeMap<String, Option<f64>>>,
    /// Under stochastic rounding, on probed steps: per group name, the fraction of non-zero
    /// updates expected to be rounded away (`lost_updates` is the fraction that was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounded_away_expected: Option<BTreeMap<String, Option<f64>>>,
    /// Under Kahan, on probed steps: per group name, the mean |compensation| in half bf16 ulps
    /// of its weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kahan_compensation: Option<BTreeMap<String, Option<f64>>>,
    /// Peak heap bytes since the previous step (binaries that count their heap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap_peak_bytes: Option<u64>,
    /// Resident set size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Validation loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_tokens_per_sec: Option<f64>,
    /// A sample of text (prompt and continuation), on the steps `eval.sample_every` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
}

/// A value per parameter group, by group name.
fn per_group(value: impl Fn(ParamGroup) -> Option<f64>) -> BTreeMap<String, Option<f64>> {
    ParamGroup::ALL
        .iter()
        .map(|g| (g.name().to_string(), value(*g)))
        .collect()
}

/// [`per_group`], or `None` when no group has a value (a figure of another rounding).
fn any_group(value: impl Fn(ParamGroup) -> Option<f64>) -> Option<BTreeMap<String, Option<f64>>> {
    let values = per_group(value);
    values.values().any(Option::is_some).then_some(values)
}

impl MetricsLine {
    /// Every line of the metrics file `path`; an error names the file and the line. A last
    /// line without its newline that does not parse was cut short by a killed writer: it is
    /// left out, with a warning.
    pub fn read_all(path: &Path) -> Result<Vec<Self>, TrainError> {
        let error = |problem: String| TrainError::Output {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| error(format!("cannot read metrics: {err}")))?;
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        let torn = &text[complete.len()..];
        let mut lines: Vec<Self> = complete
            .lines()
            .enumerate()
            .map(|(number, line)| {
                serde_json::from_str(line)
                    .map_err(|err| error(format!("metrics line {}: {err}", number + 1)))
            })
            .collect::<Result<_, _>>()?;
        match serde_json::from_str(torn) {
            Ok(line) => lines.push(line),
            Err(_) if !torn.trim().is_empty() => tracing::warn!(
                "{}: left out its last line, cut short ({} bytes without a newline): its \
                 writer was killed mid-line",
                path.display(),
                torn.len()
            ),
            Err(_) => {}
        }
        Ok(lines)
    }
}

/// A progress bar with loss, tokens/s and ETA on stderr; draws nothing when stderr is not a
/// terminal.
#[derive(Default)]
pub struct ProgressPlugin {
    bar: Option<ProgressBar>,
}

impl Plugin for ProgressPlugin {
    fn on_train_start(&mut self, info: &RunInfo) -> Result<(), TrainError> {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(info.total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
            bar.set_position(info.start_step as u64);
            bar.reset_eta();
            self.bar = Some(bar);
        }
        Ok(())
    }

    fn on_step(&mut self, s: &StepStats) -> Result<Action, TrainError> {
        if let Some(bar) = &self.bar {
            bar.set_position(s.step as u64);
            bar.set_message(format!("loss {:.4}  {:.0} tok/s", s.loss, s.tokens_per_sec));
        }
        Ok(Action::Continue)
    }

    fn on_train_end(&mut self, _: &RunSummary) -> Result<(), TrainError> {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        Ok(())
    }
}

/// Asks for a checkpoint every `every` steps and after the last step.
pub struct CheckpointPlugin {
    every: usize,
    total_steps: usize,
}

impl CheckpointPlugin {
    /// Every `every` steps (0: only at the end) of a run of `total_steps`.
    pub fn new(every: usize, total_steps: usize) -> Self {
        Self { every, total_steps }
    }
}

impl Plugin for CheckpointPlugin {
    fn on_step(&mut self, s: &StepStats) -> Result<Action, TrainError> {
        let due =
            (self.every > 0 && s.step.is_multiple_of(self.every)) || s.step == self.total_steps;
        Ok(if due {
            Action::Checkpoint
        } else {
            Action::Continue
        })
    }
}

/// Asks the run to stop after the current step, with a checkpoint, once `flag` is set: the
/// binary sets it on Ctrl-C (SIGINT).
pub struct StopOnFlag {
    flag: Arc<AtomicBool>,
}

impl StopOnFlag {
    /// Watches `flag`.
    pub fn new(flag: Arc<AtomicBool>) -> Self {
        Self { flag }
    }
}

impl Plugin for StopOnFlag {
    fn on_step(&mut self, _: &StepStats) -> Result<Action, TrainError> {
        Ok(if self.stop_requested() {
            Action::Stop
        } else {
            Action::Continue
        })
    }

    fn stop_requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

// ----------------------------------------------------------------------------------------------
// The plugin trait and what it is told

// The `Plugin` trait: hooks a run calls at its milestones, and what they may ask of it.

/// What a run is, given to plugins when it starts.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// First optimizer step of this run (0, or the resumed step).
    pub start_step: usize,
    /// Optimizer steps of the whole run.
    pub total_steps: usize,
    /// Tokens per optimizer step (all ranks).
    pub tokens_per_step: usize,
    /// Number of model parameters.
    pub num_params: usize,
    /// The model's shape, in words (`4 layers × 256 wide, 4 heads of 64, ...`).
    pub shape: String,
    /// Training FLOPs per token at the run's sequence length (forward and backward, analytic).
    pub flops_per_token: u64,
    /// The precision policy.
    pub policy: PrecisionPolicy,
    /// The run's output folder.
    pub dir: PathBuf,
}

/// One optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Optimizer steps completed (1 after the first).
    pub step: usize,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Loss of the step's last micro-batch (what the reference's logs and golden curve show).
    pub last_micro_loss: f64,
    /// Learning-rate multiplier used for this step.
    pub lr_multiplier: f64,
    /// Wall time of the step.
    pub step_time: Duration,
    /// Tokens per second of the step.
    pub tokens_per_sec: f64,
    /// Global L2 norm of the (scaled) gradients.
    pub grad_norm: f64,
    /// Whether the step's update was dropped for a non-finite loss or gradient
    /// (`train.on_non_finite = "skip"`); its loss and norm are then the non-finite values.
    pub skipped: bool,
    /// Wall time of the gradient all-reduce across ranks (zero on one rank).
    pub sync_time: Duration,
    /// The lost-update probe of this step, on the steps `eval.lost_update_every` names.
    pub lost_updates: Option<LostUpdates>,
}

/// One evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Optimizer steps completed.
    pub step: usize,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation tokens read.
    pub tokens: usize,
    /// Validation tokens per second (forward passes on this rank, wall time).
    pub tokens_per_sec: f64,
}

/// A sample of text from the model during training (`eval.sample_every`).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleStats {
    /// Optimizer steps completed.
    pub step: usize,
    /// The prompt it continues.
    pub prompt: String,
    /// The generated text (after the prompt).
    pub text: String,
    /// Tokens generated.
    pub tokens: usize,
    /// Generated tokens per second.
    pub tokens_per_sec: f64,
}

impl SampleStats {
    /// The prompt and its continuation, as a reader sees them.
    pub fn full_text(&self) -> String {
        format!("{}{}", self.prompt, self.text)
    }
}

/// A written checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// Optimizer steps completed.
    pub step: usize,
    /// The checkpoint's metadata file.
    pub path: PathBuf,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Optimizer steps completed.
    pub steps: usize,
    /// Last validation loss.
    pub val_loss: Option<f64>,
    /// Mean tokens per second over this run's steps.
    pub tokens_per_sec: f64,
    /// Wall time of this run.
    pub elapsed: Duration,
    /// Steps whose update was dropped for non-finite values.
    pub skipped_steps: usize,
    /// Whether a plugin stopped the run early ([`Action::Stop`]).
    pub stopped_early: bool,
}

/// What a plugin asks of the run after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Nothing.
    #[default]
    Continue,
    /// Write a checkpoint now.
    Checkpoint,
    /// Write a checkpoint and end the run after this step (Ctrl-C).
    Stop,
}

/// Hooks at a run's milestones. Every hook has a default that does nothing; an error stops the
/// run with that error.
pub trait Plugin {
    /// Before the first step.
    fn on_train_start(&mut self, _info: &RunInfo) -> Result<(), TrainError> {
        Ok(())
    }
    /// After each optimizer step.
    fn on_step(&mut self, _stats: &StepStats) -> Result<Action, TrainError> {
        Ok(Action::Continue)
    }
    /// After each evaluation.
    fn on_eval(&mut self, _eval: &EvalStats) -> Result<(), TrainError> {
        Ok(())
    }
    /// After a checkpoint is written.
    /// A sample was generated (after the evaluation of its step).
    fn on_sample(&mut self, _sample: &SampleStats) -> Result<(), TrainError> {
        Ok(())
    }

    fn on_checkpoint(&mut self, _checkpoint: &CheckpointInfo) -> Result<(), TrainError> {
        Ok(())
    }
    /// After the last step (not called when a plugin stopped the run).
    fn on_train_end(&mut self, _summary: &RunSummary) -> Result<(), TrainError> {
        Ok(())
    }
    /// Whether the run was asked to stop (polled during an evaluation, which a request
    /// abandons).
    fn stop_requested(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(step: usize) -> EvalStats {
        EvalStats {
            step,
            val_loss: 1.5,
            tokens: 64,
            tokens_per_sec: 1.0,
        }
    }

    #[test]
    fn a_torn_last_metrics_line_is_left_out_when_read_and_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut metrics = MetricsPlugin::new(path.clone());
        metrics.on_eval(&eval(1)).unwrap();
        drop(metrics);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 2, \"val_lo");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(MetricsLine::read_all(&path).unwrap().len(), 1);

        let mut metrics = MetricsPlugin::new(path.clone());
        metrics.on_eval(&eval(2)).unwrap();
        drop(metrics);
        let steps: Vec<usize> = MetricsLine::read_all(&path)
            .unwrap()
            .into_iter()
            .map(|line| line.step)
            .collect();
        assert_eq!(steps, [1, 2]);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));

        // A broken line that is not the last one is still an error naming it.
        std::fs::write(&path, "{\"step\": 1\n{\"step\": 2, \"val_loss\": 1.0}\n").unwrap();
        let err = MetricsLine::read_all(&path).unwrap_err().to_string();
        assert!(err.contains("metrics line 1"), "{err}");
    }
}
