//! What every subcommand starts from: the config (file or embedded, overrides), logs, the
//! device, the memory check, the default corpus, and a model read from a checkpoint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use brainfloat_backend::{BACKEND_VAR, Backend};
use brainfloat_data::shard_paths;
use brainfloat_gpt::Gpt;
use brainfloat_precision::PrecisionPolicy;
use brainfloat_trainer::{
    ConfigSource, LogFormat, TrainConfig, init_model, load_checkpoint_weights, load_weights,
    model_notes, read_record,
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

/// Bytes per parameter that holding a model's weights takes at least: fp32 masters (bf16
/// weights are made from them).
pub const WEIGHTS_BYTES_PER_PARAM: u64 = 4;

/// Bytes per parameter that training takes at least: fp32 weights and gradients, and two fp32
/// moments of Adam (Muon keeps one; activations come on top).
pub const TRAINING_BYTES_PER_PARAM: u64 = 16;

/// Refuses, before any tensor is allocated, a model that cannot fit in this machine's memory
/// on a backend whose tensors live there (flex, libtorch on the CPU): its parameter count times
/// `bytes_per_param`, a lower bound of what `purpose` takes, against the memory available to
/// this process. A GPU's own memory is not known here, so GPU backends are not checked.
pub fn check_fits(
    backend: Backend,
    config: &TrainConfig,
    bytes_per_param: u64,
    purpose: &str,
) -> Result<(), CliError> {
    use brainfloat_backend::MemoryMeasure;
    if !matches!(
        backend.memory_measure(),
        MemoryMeasure::Heap | MemoryMeasure::ResidentSet
    ) {
        return Ok(());
    }
    let gpt = config.gpt()?;
    let params = gpt.num_params() as u64;
    let needed = params.saturating_mul(bytes_per_param);
    let Some(available) = brainfloat_memory::available_memory() else {
        return Ok(());
    };
    if needed <= available {
        return Ok(());
    }
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    Err(CliError::Refused(format!(
        "the model ({}: {params} parameters) needs at least {:.1} GiB for {purpose} \
         ({bytes_per_param} bytes per parameter), and {:.1} GiB of memory is available; nothing \
         was allocated",
        gpt.describe(),
        gib(needed),
        gib(available)
    )))
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

/// The model of `checkpoint` and `config` with the model's shape: a record's shape is the
/// record's (whatever `config` says), a safetensors file's is `config`'s (the file carries
/// none). The policy is `config`'s, or with `record_precision` a record's own; a record of
/// another precision is converted, and said so.
pub fn load_model(
    checkpoint: &Path,
    mut config: TrainConfig,
    record_precision: bool,
    backend: Backend,
    device: &Device,
) -> Result<(Gpt, TrainConfig), CliError> {
    if !is_record(checkpoint) {
        check_fits(backend, &config, WEIGHTS_BYTES_PER_PARAM, "its weights")?;
        let model = init_model(&config, device)?;
        let model = load_weights(model, checkpoint)?;
        return Ok((model, config));
    }
    let record = read_record(checkpoint)?;
    config.model = record.config.model.clone();
    if record_precision {
        config.train.precision = record.config.train.precision;
    }
    config.validate()?;
    check_fits(backend, &config, WEIGHTS_BYTES_PER_PARAM, "its weights")
        .map_err(|err| err.within(checkpoint.display().to_string()))?;
    let model = init_model(&config, device)?;
    let model = load_checkpoint_weights(checkpoint, &record, model)?;
    for note in model_notes(&record.config, &config) {
        tracing::warn!("{}: {note}", checkpoint.display());
    }
    Ok((model, config))
}
