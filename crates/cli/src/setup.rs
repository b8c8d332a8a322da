//! What every subcommand starts from: the config (file or embedded, overrides), logs, the
//! device, the memory check, the default corpus, and a model read from a checkpoint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use brainfloat_backend::{BACKEND_VAR, Backend};
use brainfloat_data::shard_paths;
use brainfloat_gpt::{LanguageModel, ModelShape};
use brainfloat_memory::{LimitSource, MemoryLimit, bytes_text};
use brainfloat_precision::PrecisionPolicy;
use brainfloat_trainer::{
    AttentionState, CheckpointRecord, ConfigSource, LogFormat, MemoryEstimate, ModelSection,
    TrainConfig, init_model, load_checkpoint_weights, load_hf_weights, load_weights, model_notes,
    read_hf_shape, read_record, weights_shape,
};
use burn::tensor::Device;
use clap::Args;

use crate::corpus::prepare_sotu;
use crate::error::CliError;

/// The default configuration, embedded so that `brainfloat train` works anywhere (`tiny.toml`
/// beside this crate links `configs/tiny.toml`, so a packaged crate carries it too).
const TINY_TOML: &str = include_str!("../tiny.toml");

#[derive(Args)]
pub struct RunArgs {
    /// A TOML config (default: the embedded configs/tiny.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Precision policy, replacing train.precision: fp32, autocast, bf16 (+ overrides).
    #[arg(long)]
    pub precision: Option<PrecisionPolicy>,
    /// Backend: flex (CPU), tch (libtorch CPU), tch-cuda[:N] (libtorch GPU), cuda[:N] (Burn's
    /// CUDA); all but flex need the binary built with their feature (`cargo xtask` does it).
    #[arg(long, env = BACKEND_VAR, default_value = "flex")]
    pub backend: Backend,
    /// Override any config key: --set train.steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Log format: human or json (replacing output.log_format).
    #[arg(long, value_parser = |text: &str| LogFormat::try_from(text.to_string()))]
    pub log_format: Option<LogFormat>,
}

/// The config of `run`: its file (or the embedded tiny one) with the environment's and
/// `--set`'s overrides, then `--precision` and `--log-format`.
pub fn load_config(run: &RunArgs) -> Result<TrainConfig, CliError> {
    let source = match &run.config {
        Some(path) => ConfigSource::File(path.clone()),
        None => ConfigSource::Text {
            name: "configs/tiny.toml (embedded)".into(),
            toml: TINY_TOML.into(),
        },
    };
    let mut config = TrainConfig::load(&source, &run.overrides)?;
    if let Some(precision) = run.precision {
        config.train.precision = precision;
    }
    if let Some(format) = run.log_format {
        config.output.log_format = format;
    }
    Ok(config)
}

/// Logs on stderr; ranks other than the leader log warnings and errors only.
pub fn init_logs(format: LogFormat, leader: bool) {
    let level = if leader { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.compact().init(),
    }
}

/// What `eval`, `bench` and `validate` start with: the config, logs, the default corpus if the
/// config wants it, and the device.
pub fn prepare(run: &RunArgs) -> Result<(TrainConfig, Device), CliError> {
    let config = load_config(run)?;
    init_logs(config.output.log_format, true);
    ensure_default_corpus(&config)?;
    Ok((config, device(run.backend)?))
}

/// The device of `backend`, or why this binary cannot make it.
pub fn device(backend: Backend) -> Result<Device, CliError> {
    Ok(backend.device()?)
}

/// The room a backend's tensors have: the tightest limit on this process's memory for the CPU
/// backends, the GPU's free memory for the GPU ones; `None` where it cannot be read.
fn memory_room(backend: Backend) -> Option<MemoryLimit> {
    match backend.gpu() {
        None => brainfloat_memory::memory_limit(),
        Some(index) => {
            brainfloat_backend::gpu_free_memory(index).map(|(free, total)| MemoryLimit {
                room: free,
                source: LimitSource::Gpu {
                    device: format!("CUDA GPU {index}"),
                    total,
                },
            })
        }
    }
}

/// Refuses, before any tensor is allocated, a model whose `estimate` for `purpose` does not
/// fit in the room its backend's memory has: the error names the estimate, its parts, the limit
/// and where the limit comes from.
fn check_fits(
    backend: Backend,
    shape: &ModelShape,
    estimate: &MemoryEstimate,
    purpose: &str,
) -> Result<(), CliError> {
    let Some(limit) = memory_room(backend) else {
        return Ok(());
    };
    let needed = estimate.total();
    if needed <= limit.room {
        return Ok(());
    }
    Err(CliError::Refused(format!(
        "the model ({}: {} parameters) needs about {} for {purpose} ({}), more than the {} \
         left under {}; nothing was allocated",
        shape.describe(),
        shape.num_params(),
        bytes_text(needed),
        estimate.describe(),
        bytes_text(limit.room),
        limit.source
    )))
}

/// How the runs of one command share the process's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// One after another (a study's): the largest must fit.
    InTurn,
    /// Built together and kept side by side (the benchmark's presets).
    SideBySide,
}

/// Refuses, before anything is allocated, training `config`'s model under each of `policies`
/// ([`check_fits`] on [`MemoryEstimate::training`]).
pub fn check_training_fits(
    backend: Backend,
    config: &TrainConfig,
    policies: &[PrecisionPolicy],
    runs: Runs,
) -> Result<(), CliError> {
    let estimates = policies
        .iter()
        .map(|policy| {
            let mut config = config.clone();
            config.train.precision = *policy;
            MemoryEstimate::training(&config, AttentionState::of(backend, policy.activation()))
        })
        .collect::<Vec<_>>();
    let (estimate, purpose) = match runs {
        Runs::SideBySide if estimates.len() > 1 => (
            MemoryEstimate::side_by_side(&estimates),
            format!("training {} presets side by side", estimates.len()),
        ),
        _ => (
            estimates
                .into_iter()
                .max_by_key(MemoryEstimate::total)
                .unwrap_or_default(),
            "training".to_string(),
        ),
    };
    check_fits(backend, config.shape(), &estimate, &purpose)
}

/// Refuses, before anything is allocated, a model loaded from weights that cannot fit
/// ([`check_fits`]): its weights as read and as `config`'s policy stores them, and one batch's
/// logits.
fn check_loading_fits(backend: Backend, config: &TrainConfig) -> Result<(), CliError> {
    let shape = config.shape();
    let tokens = config.micro_batch_size() * config.train.seq_len;
    let estimate = MemoryEstimate::loading(shape, &config.train.precision, tokens);
    check_fits(backend, shape, &estimate, "loading its weights")
}

/// Fetches the default corpus when the config points at it and its shards are missing.
pub fn ensure_default_corpus(config: &TrainConfig) -> Result<(), CliError> {
    let dir = config.data.train.parent().unwrap_or(Path::new("."));
    let is_sotu = config
        .data
        .train
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("sotu_train_"));
    if is_sotu && shard_paths(&config.data.train).is_err() {
        tracing::info!(dir = %dir.display(), "fetching and tokenizing the default corpus (once)");
        if let Some(stats) = prepare_sotu(dir)? {
            tracing::info!(
                documents = stats.documents,
                train_tokens = stats.train_tokens,
                val_tokens = stats.val_tokens,
                "corpus ready"
            );
        }
    }
    Ok(())
}

/// The machine a report was measured on, in words, with the bf16 GEMM that ran on a CPU:
/// brainfloat's path (`amx`, `gemmkit`, …) on flex, libtorch's oneDNN or brainfloat's path on
/// libtorch's CPU (as `brainfloat_ops` chooses).
pub fn machine(backend: Backend) -> String {
    use brainfloat_ops::KernelPath;
    let ours = KernelPath::active().name();
    match backend {
        Backend::Flex => format!("{}, bf16 GEMM path `{ours}`", backend.machine()),
        Backend::Tch if KernelPath::cpu_has_avx512_bf16() => {
            format!("{}, bf16 GEMM libtorch's oneDNN", backend.machine())
        }
        Backend::Tch => format!("{}, bf16 GEMM path `{ours}`", backend.machine()),
        _ => backend.machine(),
    }
}

/// The command as a user would type it, for reports.
pub fn command_line() -> String {
    std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `path` names a checkpoint record (`step_*.json`) rather than a weights file.
pub fn is_record(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// Where a model's weights come from, as the command line names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A checkpoint record (`step_*.json`): shape, precision and weights.
    Record(PathBuf),
    /// A safetensors file of PyTorch-named weights; its shape from its metadata when written
    /// here, else from the config.
    Weights(PathBuf),
    /// `hf:DIR`: a Hugging Face GPT-2 folder (`config.json`, `model.safetensors`).
    HuggingFace(PathBuf),
}

impl std::str::FromStr for WeightsSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(dir) = text.strip_prefix("hf:") {
            if dir.is_empty() {
                return Err("`hf:` names a Hugging Face model folder: hf:DIR".into());
            }
            return Ok(WeightsSource::HuggingFace(dir.into()));
        }
        let path = PathBuf::from(text);
        Ok(if is_record(&path) {
            WeightsSource::Record(path)
        } else {
            WeightsSource::Weights(path)
        })
    }
}

impl WeightsSource {
    /// The shape the weights carry: a Hugging Face folder's `config.json`, a weights file's
    /// metadata (`None` for a file without it: the config's shape is used). A record's shape
    /// is read with the record.
    pub fn shape(&self) -> Result<Option<ModelShape>, CliError> {
        Ok(match self {
            WeightsSource::HuggingFace(dir) => Some(read_hf_shape(dir)?),
            WeightsSource::Weights(path) => weights_shape(path)?,
            WeightsSource::Record(_) => None,
        })
    }
}

/// `config` with its model section replaced by `shape` (the size name kept for reports), for
/// training: checked as a whole (a `train.seq_len` past the model's context is refused).
pub fn with_shape(mut config: TrainConfig, shape: &ModelShape) -> Result<TrainConfig, CliError> {
    config.model = ModelSection::of_shape(config.model.size, shape);
    config.validate()?;
    Ok(config)
}

/// `config` with the model section `model` (a file's or a record's), for evaluation and
/// generation: checked, with sequences longer than that model's context cut to it, and said so.
fn with_model(mut config: TrainConfig, model: ModelSection) -> Result<TrainConfig, CliError> {
    config.model = model;
    let max_seq_len = config.shape().max_seq_len();
    if config.train.seq_len > max_seq_len {
        tracing::info!(
            "train.seq_len {} is longer than the model's context: {max_seq_len} is used",
            config.train.seq_len
        );
        config.train.seq_len = max_seq_len;
    }
    config.validate()?;
    Ok(config)
}

/// Weights about to be loaded: where from, and the config with their shape, whose
/// architecture picks the model type to load them into ([`Weights::load`]).
pub struct Weights {
    files: WeightFiles,
    /// The config with the weights' shape and the policy they run under.
    pub config: TrainConfig,
}

/// The files weights are read from.
enum WeightFiles {
    /// A safetensors file with PyTorch names.
    File(PathBuf),
    /// A Hugging Face GPT-2 folder.
    HuggingFace(PathBuf),
    /// A checkpoint record, read.
    Record(PathBuf, Box<CheckpointRecord>),
}

impl Weights {
    /// The weights of `source` and `config` with their model's shape: a record's shape is the
    /// record's and a file's the one it carries (whatever `config` says); a safetensors file
    /// without one takes `config`'s. The policy is `config`'s, or with `record_precision` a
    /// record's own; a record of another precision is converted, and said so. Refused when the
    /// model would not fit the backend's memory.
    pub fn resolve(
        source: &WeightsSource,
        mut config: TrainConfig,
        record_precision: bool,
        backend: Backend,
    ) -> Result<Self, CliError> {
        let files = match source {
            WeightsSource::Weights(path) => WeightFiles::File(path.clone()),
            WeightsSource::HuggingFace(dir) => WeightFiles::HuggingFace(dir.clone()),
            WeightsSource::Record(path) => {
                let record = read_record(path)?;
                if record_precision {
                    config.train.precision = record.config.train.precision;
                }
                config = with_model(config, record.config.model.clone())?;
                check_loading_fits(backend, &config)
                    .map_err(|err| err.within(path.display().to_string()))?;
                for note in model_notes(&record.config, &config) {
                    tracing::warn!("{}: {note}", path.display());
                }
                let files = WeightFiles::Record(path.clone(), Box::new(record));
                return Ok(Self { files, config });
            }
        };
        if let Some(shape) = source.shape()? {
            let model = ModelSection::of_shape(config.model.size, &shape);
            config = with_model(config, model)?;
        }
        check_loading_fits(backend, &config)?;
        Ok(Self { files, config })
    }

    /// The model of type `M` (the config's architecture's) on `device` with the weights loaded.
    pub fn load<M: LanguageModel>(&self, device: &Device) -> Result<M, CliError> {
        let config = &self.config;
        let model = init_model(config, device, config.train.seed)?;
        Ok(match &self.files {
            WeightFiles::File(path) => load_weights(model, path)?,
            WeightFiles::HuggingFace(dir) => load_hf_weights(model, dir)?,
            WeightFiles::Record(path, record) => load_checkpoint_weights(path, record, model)?,
        })
    }
}
