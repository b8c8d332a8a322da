//! Stop-on-request (Ctrl-C).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Action, Plugin, StepStats};
use crate::error::TrainError;

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
