//! The built-in plugins: logs, metrics, progress, checkpoint cadence and stop-on-request.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::error::TrainError;
use crate::memory;
use crate::optim::ParamGroup;
use crate::plugin::{Action, CheckpointInfo, EvalStats, Plugin, RunInfo, RunSummary, StepStats};

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
/// per group on probed steps; `heap_peak_bytes` of the step when the binary counts its heap,
/// `rss_bytes` where the OS tells) and per evaluation (`step`, `val_loss`), appended to a file.
pub struct MetricsPlugin {
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl MetricsPlugin {
    /// Appends to `path` (created if missing, so a resumed run continues the same file).
    pub fn new(path: PathBuf) -> Self {
        Self { path, out: None }
    }

    fn write(&mut self, line: serde_json::Value) -> Result<(), TrainError> {
        let error = |err: std::io::Error| TrainError::Output {
            path: self.path.clone(),
            problem: format!("cannot write metrics: {err}"),
        };
        let out = match &mut self.out {
            Some(out) => out,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(error)?;
                self.out.insert(BufWriter::new(file))
            }
        };
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(error)
    }
}

impl Plugin for MetricsPlugin {
    fn on_step(&mut self, s: &StepStats) -> Result<Action, TrainError> {
        let mut line = json!({
            "step": s.step,
            "loss": s.loss,
            "lr": s.lr_multiplier,
            "step_time_ms": s.step_time.as_secs_f64() * 1e3,
            "tokens_per_sec": s.tokens_per_sec,
            "grad_norm": s.grad_norm,
            "sync_ms": s.sync_time.as_secs_f64() * 1e3,
        });
        if s.skipped {
            line["skipped"] = true.into();
        }
        if let Some(probe) = &s.lost_updates {
            let fractions: serde_json::Map<_, _> = ParamGroup::ALL
                .iter()
                .map(|g| (g.name().to_string(), json!(probe.fraction(*g))))
                .collect();
            line["lost_updates"] = fractions.into();
        }
        if let Some(heap) = memory::heap() {
            line["heap_peak_bytes"] = heap.peak.into();
            memory::reset_heap_peak();
        }
        if let Some(rss) = memory::rss() {
            line["rss_bytes"] = rss.current.into();
        }
        self.write(line)?;
        Ok(Action::Continue)
    }

    fn on_eval(&mut self, e: &EvalStats) -> Result<(), TrainError> {
        self.write(json!({
            "step": e.step,
            "val_loss": e.val_loss,
            "val_tokens_per_sec": e.tokens_per_sec,
        }))
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
        Ok(if self.flag.load(Ordering::SeqCst) {
            Action::Stop
        } else {
            Action::Continue
        })
    }
}
