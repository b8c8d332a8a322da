//! The record's training recipe on Burn.
//!
//! - [`RecordOptimizer`]: Muon (Newton–Schulz in the policy's matmul dtype, the
//!   `max(1, rows/cols)^0.5` factor of PyTorch's `[out, in]` layout) for the blocks' matrices,
//!   Adam for the embedding, head and scalars, explicit gradient scaling;
//! - [`Schedule`]: warmup, then the record's trapezoid (flat, linear warmdown to 0), a cosine
//!   or a linear decay;
//! - [`TrainConfig`]: one TOML per preset, overridable from the environment and the command line;
//! - [`Trainer`] (made by a [`TrainerBuilder`]): micro-batches with gradient accumulation, evaluation, atomic checkpoints with
//!   exact resume, a non-finite policy (`stop` or `skip`; a bad update is never applied), and
//!   [`Plugin`]s (logs, metrics, progress, checkpoint cadence, stop on Ctrl-C); generic over
//!   the [`LanguageModel`](brainfloat_gpt::LanguageModel) it trains;
//! - Hugging Face GPT-2 folders in ([`read_hf_shape`], [`load_hf_weights`]) and out
//!   ([`export_hf`]).
//!
//! ```
//! use brainfloat_trainer::Schedule;
//!
//! let schedule = Schedule::trapezoid(6, 0, 3);
//! assert_eq!(schedule.multiplier(5), 1.0 / 3.0);
//! ```

mod checkpoint;
mod config;
mod error;
mod faults;
mod hf;
mod history;
mod memory_estimate;
mod optim;
mod output;
pub mod plugins;
mod resume;
mod schedule;
mod trainer;

pub use brainfloat_choice::UnknownChoice;
pub use checkpoint::{
    CheckpointRecord, FileDigest, Restored, SHAPE_METADATA, checkpoint_records, load_checkpoint,
    load_checkpoint_weights, load_weights, read_record, save_weights, weights_from_safetensors,
    weights_shape, weights_to_safetensors,
};
pub use config::{
    ConfigChange, ConfigError, ConfigSource, DataSection, EvalSection, GroupValues, LogFormat,
    ModelSection, NonFinitePolicy, OptimSection, OutputSection, TrainConfig, TrainSection,
};
pub use error::{TensorFileError, TrainError};
#[cfg(feature = "testing")]
pub use faults::{FaultPoint, INJECT_NON_FINITE, KILL_AT};
pub use hf::{check_export_destination, export_hf, load_hf_weights, read_hf_shape};
pub use history::keep_last;
pub use memory_estimate::{AttentionState, MemoryEstimate};
pub use optim::{
    LostUpdates, MatrixOptimizer, ParamGroup, RecordOptimizer, RecordOptimizerConfig, clip_factor,
};
pub use plugins::{
    Action, CheckpointInfo, EvalStats, MemoryReading, MetricsLine, Plugin, RunInfo, RunSummary,
    SampleStats, StepStats,
};
pub use resume::{ResumeNote, model_notes};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{Start, Trainer, TrainerBuilder, init_model, validation_loss};
