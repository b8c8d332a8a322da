//! The progress bar.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use super::{Action, Plugin, RunInfo, RunSummary, StepStats};
use crate::error::TrainError;

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
