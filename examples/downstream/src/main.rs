//! Trains the model of a TOML config (the argument) on the backend `BRAINFLOAT_BACKEND` names
//! (`flex` by default; `tch` or `cuda` when this crate is built with that feature).
//!
//! ```text
//! cargo run --release -p brainfloat-downstream -- configs/tiny.toml
//! cargo run --release -p brainfloat-downstream --features tch -- configs/tiny.toml   # + BRAINFLOAT_BACKEND=tch
//! ```

use std::path::PathBuf;

use brainfloat_backend::Backend;
use brainfloat_trainer::plugins::{CheckpointPlugin, LogPlugin};
use brainfloat_trainer::{ConfigSource, TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: brainfloat-downstream CONFIG.toml")?;
    let config = TrainConfig::load(&ConfigSource::File(path), &[])?;
    let backend = Backend::from_env()?;
    let device = backend.device()?;
    let (steps, every) = (config.train.steps, config.output.checkpoint_every);
    let mut trainer = Trainer::builder(config)
        .plugin(LogPlugin::new((steps / 10).max(1)))
        .plugin(CheckpointPlugin::new(every, steps))
        .build(&device)?;
    let summary = trainer.run()?;
    println!(
        "{backend}: {} steps, validation loss {:.4}",
        summary.steps,
        summary.val_loss.unwrap_or(f64::NAN)
    );
    Ok(())
}
