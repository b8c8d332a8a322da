//! Hugging Face model folders in and out: the `config.json` and `model.safetensors` of a
//! `GPT2LMHeadModel`, as `save_pretrained` writes them and `from_pretrained` reads them.
//!
//! The model's parameters already carry Hugging Face's names and layouts (`Conv1D` weights
//! `[in, out]`), so weights move by name; what differs is only around them: a file may name
//! tensors without the `transformer.` prefix (as OpenAI's `gpt2` on the hub does), may hold the
//! attention's causal-mask buffers (`h.N.attn.bias`, older `transformers`) and the tied
//! `lm_head.weight`, none of which are parameters here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use brainfloat_files::write_atomic;
use brainfloat_gpt::{Gelu, Gpt2Config, LanguageModel, ModelShape};
use brainfloat_precision::named_params;
use burn::module::Module;
use burn::tensor::DType;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    checkpoint_error, read_safetensors, serialize_tensors, weights_from_tensors,
};
use crate::error::TrainError;

/// The model folder's configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// The model folder's weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The keys of `transformers`' `GPT2Config` that decide the computation; the others (dropout,
/// token ids, generation settings) are left to `transformers`' defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HfGpt2Config {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default = "default_layer_norm_epsilon")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dtype: Option<String>,
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

fn yes() -> bool {
    true
}

/// `activation_function` names and the GELU each computes.
const ACTIVATIONS: [(&str, Gelu); 3] = [
    ("gelu_new", Gelu::Tanh),
    ("gelu_pytorch_tanh", Gelu::Tanh),
    ("gelu", Gelu::Erf),
];

impl HfGpt2Config {
    /// The model's shape, or why this model cannot be built here.
    fn shape(&self) -> Result<Gpt2Config, String> {
        if let Some(kind) = self.model_type.as_deref().filter(|kind| *kind != "gpt2") {
            return Err(format!(
                "model_type is `{kind}`: only GPT-2 models (`gpt2`) can be read"
            ));
        }
        let refuse = |what: &str| {
            Err(format!(
                "{what}: not supported (GPT-2 as OpenAI trained it)"
            ))
        };
        if !self.tie_word_embeddings {
            return refuse("tie_word_embeddings = false (an untied head)");
        }
        if !self.scale_attn_weights {
            return refuse("scale_attn_weights = false");
        }
        if self.scale_attn_by_inverse_layer_idx {
            return refuse("scale_attn_by_inverse_layer_idx = true");
        }
        let gelu = ACTIVATIONS
            .iter()
            .find(|(name, _)| *name == self.activation_function)
            .map(|(_, gelu)| *gelu)
            .ok_or_else(|| {
                format!(
                    "activation_function `{}` is not supported (valid: {})",
                    self.activation_function,
                    ACTIVATIONS.map(|(name, _)| name).join(", ")
                )
            })?;
        let config = Gpt2Config {
            vocab_size: self.vocab_size,
            n_layer: self.n_layer,
            n_head: self.n_head,
            d_model: self.n_embd,
            max_seq_len: self.n_positions,
            d_mlp: self.n_inner,
            layer_norm_eps: self.layer_norm_epsilon,
            gelu,
        };
        config.validate().map_err(|err| err.to_string())?;
        Ok(config)
    }

    fn of(config: &Gpt2Config) -> Self {
        let activation = match config.gelu {
            Gelu::Tanh => "gelu_new",
            Gelu::Erf => "gelu",
        };
        Self {
            model_type: Some("gpt2".into()),
            architectures: Some(vec!["GPT2LMHeadModel".into()]),
            vocab_size: config.vocab_size,
            n_positions: config.max_seq_len,
            n_embd: config.d_model,
            n_layer: config.n_layer,
            n_head: config.n_head,
            n_inner: config.d_mlp,
            layer_norm_epsilon: config.layer_norm_eps,
            activation_function: activation.into(),
            tie_word_embeddings: true,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            dtype: Some("float32".into()),
        }
    }
}

/// The shape of the GPT-2 in the Hugging Face folder `dir` (its `config.json`).
pub fn read_hf_shape(dir: &Path) -> Result<ModelShape, TrainError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&path).map_err(|err| {
        checkpoint_error(
            &path,
            format!("cannot read a Hugging Face model's config: {err}"),
        )
    })?;
    let config: HfGpt2Config = serde_json::from_slice(&text)
        .map_err(|err| checkpoint_error(&path, format!("not a GPT-2 config: {err}")))?;
    config
        .shape()
        .map(ModelShape::Gpt2)
        .map_err(|problem| checkpoint_error(&path, problem))
}

/// `model` (built with [`read_hf_shape`]'s shape) with the weights of the Hugging Face folder
/// `dir`, each cast to the dtype its parameter has now.
pub fn load_hf_weights<M: Module>(model: M, dir: &Path) -> Result<M, TrainError> {
    let path = dir.join(WEIGHTS_FILE);
    if !path.exists() && dir.join("pytorch_model.bin").exists() {
        return Err(checkpoint_error(
            dir,
            "holds pytorch_model.bin only: save it as safetensors first \
             (`model.save_pretrained(dir, safe_serialization=True)`)",
        ));
    }
    let bytes = read_safetensors(&path)?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|err| checkpoint_error(&path, format!("not a valid safetensors file ({err})")))?;
    let tensors: HashMap<String, TensorView<'_>> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| !is_buffer_or_tied(name))
        .map(|(name, view)| (with_prefix(&name), view))
        .collect();
    weights_from_tensors(model, tensors).map_err(|err| checkpoint_error(&path, err))
}

/// Tensors of a `GPT2LMHeadModel` file that are not parameters: the tied head and the causal
/// masks of older `transformers`.
fn is_buffer_or_tied(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// `GPT2Model`'s names (`h.0.ln_1.weight`) as `GPT2LMHeadModel`'s (`transformer.h.0...`).
fn with_prefix(name: &str) -> String {
    if name.starts_with("transformer.") {
        name.to_string()
    } else {
        format!("transformer.{name}")
    }
}

/// Writes `model` (a GPT-2) as a Hugging Face folder `dir`: `config.json` and
/// `model.safetensors` with every weight in fp32, so that
/// `transformers.GPT2LMHeadModel.from_pretrained(dir)` loads it. Each file is written
/// atomically; returns the files written.
pub fn export_hf(model: &impl LanguageModel, dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    check_export_destination(dir)?;
    let ModelShape::Gpt2(config) = model.shape() else {
        return Err(export_error(
            dir,
            format!(
                "the model is the {} architecture: only GPT-2 (model.arch = \"gpt2\") exports \
                 to Hugging Face",
                model.shape().arch()
            ),
        ));
    };
    std::fs::create_dir_all(dir)
        .map_err(|err| export_error(dir, format!("cannot create: {err}")))?;
    let tensors = named_params(model)
        .into_iter()
        .map(|p| (p.name, p.tensor.cast(DType::F32).into_data(), p.shape))
        .collect();
    let weights = serialize_tensors(tensors, &[]).map_err(|err| export_error(dir, err))?;
    let config = serde_json::to_vec_pretty(&HfGpt2Config::of(&config)).expect("plain data");
    let mut written = Vec::new();
    for (name, bytes) in [(WEIGHTS_FILE, &weights), (CONFIG_FILE, &config)] {
        let path = dir.join(name);
        write_atomic(&path, bytes)
            .map_err(|err| export_error(&path, format!("cannot write: {err}")))?;
        written.push(path);
    }
    Ok(written)
}

/// Refuses an export destination that exists as something other than a folder: what
/// [`export_hf`] checks first, and a command can check before it loads a model.
pub fn check_export_destination(dir: &Path) -> Result<(), TrainError> {
    if dir.exists() && !dir.is_dir() {
        return Err(export_error(
            dir,
            "exists and is not a folder: an export writes config.json and model.safetensors \
             into a folder",
        ));
    }
    Ok(())
}

/// What is wrong with the export's destination `path`.
fn export_error(path: &Path, problem: impl ToString) -> TrainError {
    TrainError::Export {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a small GPT-2's config with `changes` made to it.
    fn config(changes: serde_json::Value) -> Result<Gpt2Config, String> {
        let mut text = serde_json::json!({
            "vocab_size": 96, "n_positions": 8, "n_embd": 16, "n_layer": 2, "n_head": 2
        });
        for (key, value) in changes.as_object().unwrap() {
            text[key] = value.clone();
        }
        serde_json::from_value::<HfGpt2Config>(text)
            .unwrap()
            .shape()
    }

    #[test]
    fn reads_gpt2s_config_and_refuses_what_it_cannot_build() {
        use serde_json::json;
        assert_eq!(config(json!({})).unwrap(), Gpt2Config::new(96, 2, 2, 16, 8));
        let erf = config(json!({"activation_function": "gelu", "n_inner": 40})).unwrap();
        assert_eq!((erf.gelu, erf.mlp_width()), (Gelu::Erf, 40));
        for (change, message) in [
            (json!({"model_type": "llama"}), "only GPT-2 models"),
            (
                json!({"activation_function": "relu"}),
                "`relu` is not supported",
            ),
            (json!({"tie_word_embeddings": false}), "untied head"),
            (
                json!({"scale_attn_by_inverse_layer_idx": true}),
                "not supported",
            ),
            (json!({"n_head": 3}), "not divisible by n_head 3"),
        ] {
            let err = config(change.clone()).unwrap_err();
            assert!(err.contains(message), "{change}: {err}");
        }
    }

    #[test]
    fn hub_names_gain_the_prefix_and_buffers_are_dropped() {
        assert_eq!(
            with_prefix("h.0.ln_1.weight"),
            "transformer.h.0.ln_1.weight"
        );
        assert_eq!(
            with_prefix("transformer.wte.weight"),
            "transformer.wte.weight"
        );
        assert!(is_buffer_or_tied("h.3.attn.bias"));
        assert!(is_buffer_or_tied("transformer.h.3.attn.masked_bias"));
        assert!(is_buffer_or_tied("lm_head.weight"));
        assert!(!is_buffer_or_tied("transformer.h.3.attn.c_attn.bias"));
        assert!(!is_buffer_or_tied("transformer.h.3.attn.c_proj.bias"));
    }
}
