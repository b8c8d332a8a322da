//! What the benchmark and the validation share: a config cut down to a few steps, and the first
//! batch of a shard set.

use std::path::Path;

use brainfloat_data::{DistributedLoader, shard_paths};
use brainfloat_gpt::{Batch, LanguageModel};
use brainfloat_trainer::{NonFinitePolicy, TrainConfig, TrainError, Trainer};

/// `config` cut down to `steps` optimizer steps: the config's warmdown fraction, no warmup, no
/// evaluation or lost-update probe inside the steps, a non-finite value stops the run, and the
/// output goes to `<output.dir>/<folder>`.
pub fn short_run_config(config: &TrainConfig, steps: usize, folder: &str) -> TrainConfig {
    let mut config = config.clone();
    let warmdown_fraction = config.train.warmdown_steps as f64 / config.train.steps as f64;
    config.train.steps = steps;
    config.train.warmup_steps = 0;
    config.train.warmdown_steps = (warmdown_fraction * steps as f64).floor() as usize;
    config.train.on_non_finite = NonFinitePolicy::Stop;
    config.eval.every = 0;
    config.eval.lost_update_every = 0;
    config.output.dir = config.output.dir.join(folder);
    config
}

/// The first micro-batch of the shards `pattern` names, on `trainer`'s device.
pub(crate) fn first_batch<M: LanguageModel>(
    trainer: &Trainer<M>,
    pattern: &Path,
) -> Result<Batch, TrainError> {
    let config = trainer.config();
    let (micro, seq_len) = (config.micro_batch_size(), config.train.seq_len);
    let mut loader = DistributedLoader::new(shard_paths(pattern)?, micro, seq_len, 0, 1)?;
    Ok(Batch::from_window(
        &loader.next_window()?,
        micro,
        seq_len,
        trainer.device(),
    )?)
}
