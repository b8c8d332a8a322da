//! The run configuration: one TOML file, every key overridable from the environment
//! (`BRAINFLOAT__TRAIN__STEPS=100`) and the command line (`train.steps=100`), validated with
//! errors that name the key.

use std::path::PathBuf;

use brainfloat_choice::choice;
use brainfloat_gpt::{Arch, Gelu, Gpt2Config, GptConfig, GptError, ModelShape, ModelSize};
use brainfloat_precision::{ParamRole, PrecisionPolicy};
use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::optim::MatrixOptimizer;
use crate::schedule::{Schedule, ScheduleKind};

/// Prefix of environment overrides: `BRAINFLOAT__SECTION__KEY`.
pub const ENV_PREFIX: &str = "BRAINFLOAT";

/// The model section, typed: the named size it started from (reports name it) and the shape it
/// builds, the size's values with the section's replacements, checked when the config is read
/// (an error names the key at fault).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelKeys", into = "ModelKeys")]
pub struct ModelSection {
    /// `tiny`, `small` or `speedrun`: the size the shape started from.
    pub size: ModelSize,
    /// The model's architecture and shape.
    pub shape: ModelShape,
}

impl ModelSection {
    /// The section of `shape` exactly, under the size name `size`.
    pub fn of_shape(size: ModelSize, shape: &ModelShape) -> Self {
        Self {
            size,
            shape: shape.clone(),
        }
    }
}

impl TryFrom<ModelKeys> for ModelSection {
    type Error = ConfigError;

    /// The size's shape with the keys' replacements; a key of the other architecture, or a
    /// shape that cannot be built, is refused by name.
    fn try_from(m: ModelKeys) -> Result<Self, ConfigError> {
        let size = m.size.config();
        let (vocab_size, n_layer, n_head, d_model, max_seq_len) = (
            m.vocab_size.unwrap_or(size.vocab_size),
            m.n_layer.unwrap_or(size.n_layer),
            m.n_head.unwrap_or(size.n_head),
            m.d_model.unwrap_or(size.d_model),
            m.max_seq_len.unwrap_or(size.max_seq_len),
        );
        let (record_keys, gpt2_keys) = (
            [
                ("logit_softcap", m.logit_softcap.is_some()),
                ("rope_base", m.rope_base.is_some()),
            ],
            [
                ("d_mlp", m.d_mlp.is_some()),
                ("layer_norm_eps", m.layer_norm_eps.is_some()),
                ("gelu", m.gelu.is_some()),
            ],
        );
        let (others, other_arch) = match m.arch {
            Arch::Record => (&gpt2_keys[..], Arch::Gpt2),
            Arch::Gpt2 => (&record_keys[..], Arch::Record),
        };
        if let Some((key, _)) = others.iter().find(|(_, set)| *set) {
            return Err(invalid(
                &format!("model.{key}"),
                format!(
                    "belongs to the {other_arch} architecture, and model.arch is `{}`",
                    m.arch
                ),
            ));
        }
        let shape = match m.arch {
            Arch::Record => ModelShape::Record(GptConfig {
                vocab_size,
                n_layer,
                n_head,
                d_model,
                max_seq_len,
                logit_softcap: m.logit_softcap.unwrap_or(size.logit_softcap),
                rope_base: m.rope_base.unwrap_or(size.rope_base),
            }),
            Arch::Gpt2 => {
                let gpt2 = Gpt2Config::new(vocab_size, n_layer, n_head, d_model, max_seq_len)
                    .with_d_mlp(m.d_mlp);
                ModelShape::Gpt2(Gpt2Config {
                    layer_norm_eps: m.layer_norm_eps.unwrap_or(gpt2.layer_norm_eps),
                    gelu: m.gelu.unwrap_or(gpt2.gelu),
                    ..gpt2
                })
            }
        };
        shape.validate().map_err(|err| match err {
            GptError::InvalidConfig { field, reason } => invalid(&format!("model.{field}"), reason),
            other => invalid("model", other.to_string()),
        })?;
        Ok(Self {
            size: m.size,
            shape,
        })
    }
}

/// The model section as written: an architecture, a named size, and any of its shape's values
/// replaced (`--set model.n_layer=4`). Read into a [`ModelSection`] at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelKeys {
    /// `record` (the default: the CastBf16 record's GPT) or `gpt2` (Hugging Face's GPT-2:
    /// learned positions, LayerNorm, GELU, biases, tied head).
    #[serde(default)]
    arch: Arch,
    /// `tiny`, `small` or `speedrun`: the shape the keys below start from.
    size: ModelSize,
    /// Vocabulary size, replacing the size's (50304 for GPT-2 tokens).
    vocab_size: Option<usize>,
    /// Transformer blocks, replacing the size's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n_layer: Option<usize>,
    /// Attention heads, replacing the size's (`d_model / n_head` must be even).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n_head: Option<usize>,
    /// Model width, replacing the size's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d_model: Option<usize>,
    /// Longest sequence, replacing the size's (the rotary tables' length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_seq_len: Option<usize>,
    /// Logit soft-cap, replacing the record's 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logit_softcap: Option<f64>,
    /// Rotary base, replacing the record's 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rope_base: Option<f64>,
    /// GPT-2 only: the MLP's hidden width (default 4 × d_model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d_mlp: Option<usize>,
    /// GPT-2 only: LayerNorm's epsilon (default 1e-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer_norm_eps: Option<f64>,
    /// GPT-2 only: `tanh` (GPT-2's `gelu_new`, the default) or `erf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gelu: Option<Gelu>,
}

/// The keys that build a section's shape exactly: its architecture and every value set (what a
/// checkpoint record writes).
impl From<ModelSection> for ModelKeys {
    fn from(ModelSection { size, shape }: ModelSection) -> Self {
        let mut section = ModelKeys {
            arch: shape.arch(),
            size,
            vocab_size: Some(shape.vocab_size()),
            n_layer: None,
            n_head: None,
            d_model: None,
            max_seq_len: Some(shape.max_seq_len()),
            logit_softcap: None,
            rope_base: None,
            d_mlp: None,
            layer_norm_eps: None,
            gelu: None,
        };
        match &shape {
            ModelShape::Record(c) => {
                (section.n_layer, section.n_head, section.d_model) =
                    (Some(c.n_layer), Some(c.n_head), Some(c.d_model));
                section.logit_softcap = Some(c.logit_softcap);
                section.rope_base = Some(c.rope_base);
            }
            ModelShape::Gpt2(c) => {
                (section.n_layer, section.n_head, section.d_model) =
                    (Some(c.n_layer), Some(c.n_head), Some(c.d_model));
                section.d_mlp = c.d_mlp;
                section.layer_norm_eps = Some(c.layer_norm_eps);
                section.gelu = Some(c.gelu);
            }
        }
        section
    }
}

/// The data section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training shards: a path or a pattern with one `*`.
    pub train: PathBuf,
    /// Validation shards.
    pub val: PathBuf,
    /// The Hugging Face `tokenizer.json` the shards were made with, for the samples during
    /// training (default: GPT-2's BPE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
}

/// The training section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per optimizer step, over all ranks and micro-steps.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-steps per optimizer step (gradients summed, then divided by this).
    pub grad_accum_steps: usize,
    /// Data-parallel ranks.
    pub ranks: usize,
    /// Learning-rate warmup steps.
    pub warmup_steps: usize,
    /// Learning-rate warmdown steps at the end (the trapezoid's).
    pub warmdown_steps: usize,
    /// What follows the warmup: `trapezoid` (the record's, the default), `cosine` or `linear`.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Where `cosine` and `linear` end, as a fraction of the peak rate (default 0).
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Seed of the model's initialisation.
    pub seed: u64,
    /// Precision policy: a preset (`fp32`, `autocast`, `bf16`, `bf16-pure`, `bf16-sr`,
    /// `bf16-kahan`), with optional overrides (`bf16,embedding=fp32`).
    pub precision: PrecisionPolicy,
    /// What a non-finite loss or gradient does (the bad update is never applied).
    #[serde(default)]
    pub on_non_finite: NonFinitePolicy,
    /// With `on_non_finite = "skip"`: the run ends with an error after this many skipped steps
    /// in a row (a run that only skips trains nothing); 0 = no limit.
    #[serde(default = "default_max_skipped_steps")]
    pub max_skipped_steps: usize,
}

fn default_max_skipped_steps() -> usize {
    10
}

/// What a step with a non-finite loss or gradient norm does; its update is dropped either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NonFinitePolicy {
    /// The run ends with an error naming the last good checkpoint.
    #[default]
    Stop,
    /// The step is counted as skipped and training goes on.
    Skip,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LogFormat {
    /// Compact lines for people.
    Human,
    /// One JSON object per line.
    Json,
}

choice!(NonFinitePolicy, "non-finite policy", { Stop => "stop", Skip => "skip" });
choice!(LogFormat, "log format", { Human => "human", Json => "json" });

/// The optimizer section (the record's values in `speedrun`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Adam rate of the embedding.
    pub embedding_lr: f64,
    /// Adam rate of the head.
    pub head_lr: f64,
    /// Adam rate of the scalars.
    pub scalar_lr: f64,
    /// Muon rate of the block matrices.
    pub matrix_lr: f64,
    /// Adam β1.
    pub adam_beta1: f64,
    /// Adam β2.
    pub adam_beta2: f64,
    /// Adam ε.
    pub adam_eps: f64,
    /// Muon momentum after warmup.
    pub muon_momentum: f64,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Decoupled weight decay per group (AdamW's; Muon's matrices decay the same way):
    /// `w ← w − lr·wd·w` with each group's rate. 0 everywhere by default, as in the record.
    #[serde(default)]
    pub weight_decay: GroupValues,
    /// Clip the gradients' global L2 norm (after the all-reduce and the accumulation scale) to
    /// this, as `torch.nn.utils.clip_grad_norm_` does; 0 (the default) = no clipping.
    #[serde(default)]
    pub max_grad_norm: f64,
    /// Parameter roles not trained (`embedding`, `hidden_matrix`, `output_matrix`,
    /// `linear_bias`, `scalar`): their weights stay as loaded and get no optimizer state.
    #[serde(default)]
    pub freeze: Vec<ParamRole>,
    /// `muon` (the record's, the default) or `adam` for the hidden matrices, at `matrix_lr`.
    #[serde(default)]
    pub matrix_optimizer: MatrixOptimizer,
}

/// One value per optimizer group; a group not named is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupValues {
    /// The token embedding (Adam).
    #[serde(default)]
    pub embedding: f64,
    /// The output head (Adam).
    #[serde(default)]
    pub head: f64,
    /// The blocks' matrices (Muon).
    #[serde(default)]
    pub matrices: f64,
    /// The scalars (Adam).
    #[serde(default)]
    pub scalars: f64,
}

/// The evaluation section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Validate every this many steps (and at the end); 0 = only at the end.
    pub every: usize,
    /// Validation tokens per evaluation.
    pub tokens: usize,
    /// Run the lost-update probe every this many steps (and at the first); 0 (the default) =
    /// never. It reads every weight and update back to the host (docs/benchmark.md: its cost).
    #[serde(default)]
    pub lost_update_every: usize,
    /// Generate a sample at the evaluations of every this many steps (and at the end); 0 (the
    /// default) = never. It goes to the log and to the metrics stream.
    #[serde(default)]
    pub sample_every: usize,
    /// The text samples continue.
    #[serde(default = "default_sample_prompt")]
    pub sample_prompt: String,
    /// Tokens per sample.
    #[serde(default = "default_sample_tokens")]
    pub sample_tokens: usize,
}

fn default_sample_prompt() -> String {
    "The state of the Union is".into()
}

fn default_sample_tokens() -> usize {
    48
}

/// The output section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Folder of checkpoints and metrics.
    pub dir: PathBuf,
    /// Checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// `human` or `json` logs.
    pub log_format: LogFormat,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Keep only the newest this many checkpoints, removing older ones after each new one is
    /// written; 0 = keep all.
    #[serde(default)]
    pub keep_last: usize,
    /// A fresh run into a folder holding checkpoints moves them into a subfolder
    /// (`replaced-<run>`) instead of refusing to start.
    #[serde(default)]
    pub overwrite: bool,
    /// Also write the metrics as TensorBoard event files, beside `metrics.jsonl`
    /// (`tensorboard --logdir <dir>`).
    #[serde(default)]
    pub tensorboard: bool,
}

/// A whole run's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model shape.
    pub model: ModelSection,
    /// Data.
    pub data: DataSection,
    /// Training.
    pub train: TrainSection,
    /// Optimizers.
    pub optim: OptimSection,
    /// Evaluation.
    pub eval: EvalSection,
    /// Output.
    pub output: OutputSection,
}

/// A configuration that cannot be used: the key and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config {key}: {problem}")]
pub struct ConfigError {
    /// The key (`train.steps`), or the file.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// Where a configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A TOML file.
    File(PathBuf),
    /// TOML text (an embedded preset), with a name for errors.
    Text {
        /// Name used in errors.
        name: String,
        /// The TOML.
        toml: String,
    },
}

/// A key whose value differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// `section.key`.
    pub key: String,
    /// The value before (as TOML would write it).
    pub old: String,
    /// The value now.
    pub new: String,
}

/// `section.key → value` of every leaf of a config, as JSON values.
fn leaves(config: &TrainConfig) -> Vec<(String, serde_json::Value)> {
    let value = serde_json::to_value(config).expect("a config serializes");
    let mut out = Vec::new();
    for (section, keys) in value.as_object().into_iter().flatten() {
        for (key, leaf) in keys.as_object().into_iter().flatten() {
            out.push((format!("{section}.{key}"), leaf.clone()));
        }
    }
    out
}

impl GroupValues {
    /// The value of `group`.
    pub fn of(&self, group: crate::optim::ParamGroup) -> f64 {
        use crate::optim::ParamGroup;
        match group {
            ParamGroup::Embedding => self.embedding,
            ParamGroup::Head => self.head,
            ParamGroup::Matrices => self.matrices,
            ParamGroup::Scalars => self.scalars,
        }
    }
}

impl TrainConfig {
    /// Every key whose value differs from `old`'s, sorted by key.
    pub fn changes_from(&self, old: &TrainConfig) -> Vec<ConfigChange> {
        let before: std::collections::BTreeMap<_, _> = leaves(old).into_iter().collect();
        leaves(self)
            .into_iter()
            .filter_map(|(key, new)| {
                let old = before.get(&key).cloned().unwrap_or(serde_json::Value::Null);
                (old != new).then(|| ConfigChange {
                    key,
                    old: old.to_string(),
                    new: new.to_string(),
                })
            })
            .collect()
    }

    /// Loads `source`, then the environment (`BRAINFLOAT__SECTION__KEY`), then `overrides`
    /// (`section.key=value`, last wins), and validates the result.
    pub fn load(source: &ConfigSource, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut builder = Config::builder();
        builder = match source {
            ConfigSource::File(path) => {
                if !path.is_file() {
                    return Err(invalid(
                        &path.display().to_string(),
                        "config file not found",
                    ));
                }
                builder.add_source(File::from(path.as_path()).format(FileFormat::Toml))
            }
            ConfigSource::Text { toml, .. } => {
                builder.add_source(File::from_str(toml, FileFormat::Toml))
            }
        };
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| invalid(item, "an override is written section.key=value"))?;
            builder = builder
                .set_override(key.trim().to_lowercase(), value.trim())
                .map_err(|err| invalid(key, err.to_string()))?;
        }
        let name = match source {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Text { name, .. } => name.clone(),
        };
        let config: TrainConfig = builder
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|err| explain(&name, err))?;
        config.validate()?;
        Ok(config)
    }

    /// The model's architecture and shape (checked when the config was read).
    pub fn shape(&self) -> &ModelShape {
        &self.model.shape
    }

    /// The learning-rate schedule of the run.
    pub fn schedule(&self) -> Schedule {
        let t = &self.train;
        match t.schedule {
            ScheduleKind::Trapezoid => {
                Schedule::trapezoid(t.steps, t.warmup_steps, t.warmdown_steps)
            }
            kind => Schedule::decay(kind, t.steps, t.warmup_steps, t.min_lr_ratio),
        }
    }

    /// Sequences per micro-batch on one rank.
    pub fn micro_batch_size(&self) -> usize {
        self.train.batch_size / (self.train.ranks * self.train.grad_accum_steps)
    }

    /// Tokens per optimizer step, all ranks.
    pub fn tokens_per_step(&self) -> usize {
        self.train.batch_size * self.train.seq_len
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_counts()?;
        self.validate_rates()?;
        self.validate_shapes()
    }

    /// Counts that must be at least 1.
    fn validate_counts(&self) -> Result<(), ConfigError> {
        let t = &self.train;
        let positive = [
            ("train.steps", t.steps),
            ("train.batch_size", t.batch_size),
            ("train.seq_len", t.seq_len),
            ("train.grad_accum_steps", t.grad_accum_steps),
            ("train.ranks", t.ranks),
            ("optim.ns_steps", self.optim.ns_steps),
            ("eval.tokens", self.eval.tokens),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.eval.sample_every > 0 && self.eval.sample_tokens == 0 {
            return Err(invalid(
                "eval.sample_tokens",
                "must be at least 1 when eval.sample_every is on",
            ));
        }
        Ok(())
    }

    /// Rates, decays and momenta in their ranges.
    fn validate_rates(&self) -> Result<(), ConfigError> {
        let t = &self.train;
        let o = &self.optim;
        let rates = [
            ("optim.embedding_lr", o.embedding_lr),
            ("optim.head_lr", o.head_lr),
            ("optim.scalar_lr", o.scalar_lr),
            ("optim.matrix_lr", o.matrix_lr),
            ("optim.adam_eps", o.adam_eps),
        ];
        for (key, value) in rates {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(
                    key,
                    format!("must be a positive number, got {value}"),
                ));
            }
        }
        let decays = [
            ("optim.weight_decay.embedding", o.weight_decay.embedding),
            ("optim.weight_decay.head", o.weight_decay.head),
            ("optim.weight_decay.matrices", o.weight_decay.matrices),
            ("optim.weight_decay.scalars", o.weight_decay.scalars),
            ("optim.max_grad_norm", o.max_grad_norm),
        ];
        for (key, value) in decays {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(
                    key,
                    format!("must be 0 or a positive number, got {value}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(invalid(
                "train.min_lr_ratio",
                format!("must be in [0, 1], got {}", t.min_lr_ratio),
            ));
        }
        for (key, value) in [
            ("optim.adam_beta1", o.adam_beta1),
            ("optim.adam_beta2", o.adam_beta2),
            ("optim.muon_momentum", o.muon_momentum),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(invalid(key, format!("must be in [0, 1), got {value}")));
            }
        }
        Ok(())
    }

    /// The batch's split over ranks and micro-steps, the schedule's length, the model's context.
    fn validate_shapes(&self) -> Result<(), ConfigError> {
        let t = &self.train;
        let per_step = t.ranks * t.grad_accum_steps;
        if !t.batch_size.is_multiple_of(per_step) {
            return Err(invalid(
                "train.batch_size",
                format!(
                    "{} sequences cannot be split over {} rank(s) × {} accumulation step(s)",
                    t.batch_size, t.ranks, t.grad_accum_steps
                ),
            ));
        }
        let warmdown = match t.schedule {
            ScheduleKind::Trapezoid => t.warmdown_steps,
            ScheduleKind::Cosine | ScheduleKind::Linear => 0,
        };
        if t.warmup_steps + warmdown > t.steps {
            return Err(invalid(
                "train.warmdown_steps",
                format!(
                    "warmup {} + warmdown {} exceed the {} steps",
                    t.warmup_steps, t.warmdown_steps, t.steps
                ),
            ));
        }
        let max_seq_len = self.shape().max_seq_len();
        if t.seq_len > max_seq_len {
            return Err(invalid(
                "train.seq_len",
                format!(
                    "{} is longer than the model's maximum of {max_seq_len} (model.max_seq_len)",
                    t.seq_len
                ),
            ));
        }
        Ok(())
    }
}

/// Turns config-rs's messages into one naming the key.
fn explain(source: &str, err: config::ConfigError) -> ConfigError {
    let text = err.to_string();
    // serde's messages: "unknown field `stepz`, expected one of ..." and "missing field `steps`".
    let key = text
        .split(" for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    match key {
        // The key leads the message already.
        Some(key) => {
            let problem = text.split(" for key `").next().unwrap_or(&text);
            // A section read into a type (the model section) names its own key inside.
            let inner = problem
                .strip_prefix("config ")
                .and_then(|rest| rest.split_once(": "))
                .filter(|(inner, _)| inner.starts_with(&format!("{key}.")));
            match inner {
                Some((inner, problem)) => invalid(inner, problem),
                None => invalid(&key, problem),
            }
        }
        None => invalid(source, text),
    }
}
