//! Plugins: hooks a run calls at its milestones ([`Plugin`]), what they are told, and the
//! built-in ones — logs, metrics (with TensorBoard's event files), progress, checkpoint cadence
//! and stop-on-request, one file each.

mod checkpoint;
mod log;
mod metrics;
mod progress;
mod stop;
mod tensorboard;

use std::path::PathBuf;
use std::time::Duration;

pub use brainfloat_memory::MemoryReading;
use brainfloat_precision::PrecisionPolicy;

use crate::error::TrainError;
use crate::optim::LostUpdates;

pub use checkpoint::CheckpointPlugin;
pub use log::LogPlugin;
pub use metrics::{MetricsLine, MetricsPlugin};
pub use progress::ProgressPlugin;
pub use stop::StopOnFlag;

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
    /// A sample was generated (after the evaluation of its step).
    fn on_sample(&mut self, _sample: &SampleStats) -> Result<(), TrainError> {
        Ok(())
    }
    /// After a checkpoint is written.
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
