//! Checkpoint cadence.

use super::{Action, Plugin, StepStats};
use crate::error::TrainError;

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
