//! Training through `brainfloat-trainer`'s API with the configuration written in code, no TOML:
//! the record's GPT at its smallest on a token shard made here, with a cosine schedule, weight
//! decay on the head, gradient clipping, the metrics plugin and a checkpoint at the end.
//!
//! ```text
//! cargo run --release -p brainfloat-examples --example train_in_code
//! ```

use brainfloat_backend::Backend;
use brainfloat_data::write_shard;
use brainfloat_gpt::{GptConfig, ModelShape, ModelSize};
use brainfloat_precision::PrecisionPolicy;
use brainfloat_trainer::plugins::{CheckpointPlugin, LogPlugin, MetricsPlugin};
use brainfloat_trainer::{
    DataSection, EvalSection, GroupValues, LogFormat, MatrixOptimizer, ModelSection,
    NonFinitePolicy, OptimSection, OutputSection, ScheduleKind, TrainConfig, TrainSection, Trainer,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("brainfloat-train-in-code");
    std::fs::create_dir_all(&dir)?;
    // A shard of a 64-token repeating pattern: something a small model learns in a few steps.
    let shard = dir.join("pattern_000.bin");
    let tokens: Vec<u32> = (0..50_000u32).map(|i| (i % 64) * 7 % 512).collect();
    write_shard(&shard, &tokens)?;

    let steps = 40;
    let config = TrainConfig {
        // The tiny size's shape: 2 blocks of width 64, vocabulary 512, 64 positions.
        model: ModelSection::of_shape(ModelSize::Tiny, &ModelShape::Record(GptConfig::tiny())),
        data: DataSection {
            train: shard.clone(),
            val: shard,
            tokenizer: None,
        },
        train: TrainSection {
            steps,
            batch_size: 8,
            seq_len: 64,
            grad_accum_steps: 2,
            ranks: 1,
            warmup_steps: 4,
            warmdown_steps: 0,
            schedule: ScheduleKind::Cosine,
            min_lr_ratio: 0.1,
            seed: 1337,
            precision: PrecisionPolicy::bf16(),
            on_non_finite: NonFinitePolicy::Skip,
            max_skipped_steps: 10,
        },
        optim: OptimSection {
            embedding_lr: 0.3,
            head_lr: 0.004,
            scalar_lr: 0.02,
            matrix_lr: 0.02,
            adam_beta1: 0.9,
            adam_beta2: 0.95,
            adam_eps: 1e-8,
            muon_momentum: 0.95,
            ns_steps: 5,
            weight_decay: GroupValues {
                head: 0.1,
                ..GroupValues::default()
            },
            max_grad_norm: 1.0,
            freeze: Vec::new(),
            matrix_optimizer: MatrixOptimizer::Muon,
        },
        eval: EvalSection {
            every: 20,
            tokens: 4096,
            lost_update_every: 0,
            sample_every: 0,
            sample_prompt: String::new(),
            sample_tokens: 1,
        },
        output: OutputSection {
            dir: dir.join("run"),
            checkpoint_every: 0,
            log_format: LogFormat::Human,
            progress: false,
            keep_last: 1,
            overwrite: true,
            tensorboard: false,
        },
    };
    config.validate()?;
    let device = Backend::from_env()?.device()?;
    let metrics = config.output.dir.join("metrics.jsonl");
    let mut trainer = Trainer::builder(config)
        .plugin(LogPlugin::new(10))
        .plugin(MetricsPlugin::new(metrics.clone()))
        .plugin(CheckpointPlugin::new(0, steps))
        .build(&device)?;
    let summary = trainer.run()?;
    println!(
        "{} steps, validation loss {:.3}; metrics in {}",
        summary.steps,
        summary.val_loss.unwrap_or(f64::NAN),
        metrics.display()
    );
    Ok(())
}
