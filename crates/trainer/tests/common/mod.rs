#![allow(dead_code)] // each test binary uses part of it
//! A tiny run on the golden tokens, configured in a temporary folder.

use std::path::Path;

use brainfloat_precision::named_params;
use brainfloat_tests::{golden_dir, values};
use brainfloat_trainer::{ConfigSource, TrainConfig, Trainer};

/// Every parameter of the trainer's model, flattened in visiting order.
pub fn flat_params(trainer: &Trainer) -> Vec<f64> {
    named_params(trainer.model())
        .into_iter()
        .flat_map(|p| values(p.tensor))
        .collect()
}

/// TOML for the golden-sized model (vocab 512, 2 layers, width 64) on the golden tokens.
pub fn toml(dir: &Path, precision: &str) -> String {
    let shard = golden_dir().join("tokens.bin");
    format!(
        r#"
[model]
size = "tiny"
[data]
train = "{shard}"
val = "{shard}"
[train]
steps = 6
batch_size = 4
seq_len = 32
grad_accum_steps = 1
ranks = 1
warmup_steps = 0
warmdown_steps = 3
seed = 7
precision = "{precision}"
[optim]
embedding_lr = 0.3
head_lr = 0.002
scalar_lr = 0.02
matrix_lr = 0.02
adam_beta1 = 0.9
adam_beta2 = 0.95
adam_eps = 1e-8
muon_momentum = 0.95
ns_steps = 5
[eval]
every = 3
tokens = 256
[output]
dir = "{out}"
checkpoint_every = 3
log_format = "human"
progress = false
"#,
        shard = shard.display(),
        out = dir.join("run").display()
    )
}

/// The config of [`toml`] with `overrides`.
pub fn config(dir: &Path, precision: &str, overrides: &[&str]) -> TrainConfig {
    let source = ConfigSource::Text {
        name: "test".into(),
        toml: toml(dir, precision),
    };
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(&source, &overrides).unwrap()
}
