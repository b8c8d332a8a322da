//! Human or JSON logs through `tracing`.

use super::{
    Action, CheckpointInfo, EvalStats, Plugin, RunInfo, RunSummary, SampleStats, StepStats,
};
use crate::error::TrainError;

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
