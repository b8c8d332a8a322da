//! GPT-2 as Hugging Face's `GPT2LMHeadModel` computes it, in one file: learned positions,
//! LayerNorm with bias, GELU, the fused `c_attn` stored `[in, out]` as `Conv1D` stores it,
//! biases everywhere, and the head tied to the token embedding. Built from the same precision
//! machinery as the record's model: every linear layer is a [`CastedLinear`], every dtype
//! comes from the [`PrecisionPolicy`] whose compute dtypes each layer is given, and the head
//! runs fused with the loss ([`head_loss`]).
//! Parameters carry Hugging Face's names (`transformer.h.0.attn.c_attn.weight`), so files move
//! between this model and `transformers` by name and shape alone.

use brainfloat_choice::choice;
use brainfloat_precision::{
    ACCUMULATION_DTYPE, CastedLinear, CastedLinearConfig, ComputeDtypes, Head, LOGITS_PER_CHUNK,
    LOSS_DTYPE, ParamRole, ParamRoles, PrecisionAware, PrecisionPolicy, RoleMap, WeightLayout,
    head_loss,
};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, FloatDType, Int, Tensor};

use crate::batch::{Batch, Limits, check_context};
use crate::cache::{Cache, LayerCache};
use crate::config::{ParamSize, check_sizes};
use crate::error::GptError;
use crate::language_model::{Arch, LanguageModel, ModelShape, wrong_arch};

/// The GELU of a GPT-2 model (`activation_function` in its `config.json`), written `tanh` or
/// `erf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Gelu {
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: GPT-2's own (`gelu_new`).
    Tanh,
    /// `0.5·x·(1 + erf(x/√2))` (`gelu`).
    Erf,
}

choice!(Gelu, "GELU", { Tanh => "tanh", Erf => "erf" });

/// Shape of a GPT-2 model: the fields of Hugging Face's `GPT2Config` this model reads.
#[derive(Config, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size (`vocab_size`; 50257 for GPT-2's tokenizer).
    pub vocab_size: usize,
    /// Transformer blocks (`n_layer`).
    pub n_layer: usize,
    /// Attention heads (`n_head`).
    pub n_head: usize,
    /// Model width (`n_embd`).
    pub d_model: usize,
    /// Learned positions, the longest sequence (`n_positions`).
    pub max_seq_len: usize,
    /// Width of the MLP's hidden layer (`n_inner`; 4 × `d_model` when absent).
    #[config(default = "None")]
    pub d_mlp: Option<usize>,
    /// LayerNorm's epsilon (`layer_norm_epsilon`).
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// The MLP's activation (`activation_function`).
    #[config(default = "Gelu::Tanh")]
    pub gelu: Gelu,
}

impl Gpt2Config {
    /// OpenAI's smallest GPT-2 (124M): 12 layers, width 768, 12 heads, context 1024.
    pub fn gpt2() -> Self {
        Self::new(50257, 12, 12, 768, 1024)
    }

    /// Width of the MLP's hidden layer.
    pub fn mlp_width(&self) -> usize {
        self.d_mlp.unwrap_or(4 * self.d_model)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// The shape in words.
    pub fn describe(&self) -> String {
        format!(
            "GPT-2: {} layers × {} wide, {} heads of {}, context {}, vocabulary {}",
            self.n_layer,
            self.d_model,
            self.n_head,
            self.head_dim(),
            self.max_seq_len,
            self.vocab_size
        )
    }

    /// Checks that the shape is buildable.
    pub fn validate(&self) -> Result<(), GptError> {
        check_sizes(
            &[
                ("vocab_size", self.vocab_size),
                ("n_layer", self.n_layer),
                ("n_head", self.n_head),
                ("d_model", self.d_model),
                ("max_seq_len", self.max_seq_len),
                ("d_mlp", self.mlp_width()),
            ],
            self.d_model,
            self.n_head,
        )?;
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(GptError::InvalidConfig {
                field: "layer_norm_eps",
                reason: format!(
                    "layer_norm_eps must be positive, got {}",
                    self.layer_norm_eps
                ),
            });
        }
        Ok(())
    }

    /// Parameters that take part in matrix products: the blocks' linears and the tied head.
    pub fn matmul_params(&self) -> usize {
        let (d, m) = (self.d_model, self.mlp_width());
        self.n_layer * (4 * d * d + 2 * d * m) + self.vocab_size * d
    }

    /// Training FLOPs per token, counted as for the record's model
    /// ([`GptConfig::training_flops_per_token`](crate::GptConfig::training_flops_per_token)).
    pub fn training_flops_per_token(&self, seq_len: usize) -> u64 {
        6 * self.matmul_params() as u64 + 12 * (self.n_layer * self.d_model * seq_len) as u64
    }

    /// Number of parameters (the tied head counted once, as `transformers` counts).
    pub fn num_params(&self) -> usize {
        ParamSize::total(&self.param_sizes())
    }

    /// Every parameter's role and element count, in the order of `Gpt2`'s `param_roles`.
    pub fn param_sizes(&self) -> Vec<ParamSize> {
        let (d, m) = (self.d_model, self.mlp_width());
        let size = |role, elements| ParamSize { role, elements };
        let mut sizes = vec![
            size(ParamRole::OutputMatrix, self.vocab_size * d),
            size(ParamRole::Embedding, self.max_seq_len * d),
        ];
        // ln_1 and ln_2 of each block, then ln_f: a gain and a bias each.
        sizes.extend((0..2 * self.n_layer + 1).flat_map(|_| [size(ParamRole::Scalar, d); 2]));
        for _ in 0..self.n_layer {
            // c_attn, attention's c_proj, c_fc, the MLP's c_proj: weight, then bias.
            for (weight, bias) in [(d * 3 * d, 3 * d), (d * d, d), (d * m, m), (m * d, d)] {
                sizes.push(size(ParamRole::HiddenMatrix, weight));
                sizes.push(size(ParamRole::LinearBias, bias));
            }
        }
        sizes
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_seq_len: self.max_seq_len,
            vocab_size: self.vocab_size,
        }
    }

    /// Builds the model with GPT-2's initialisation (weights N(0, 0.02), the residual
    /// projections N(0, 0.02/√(2·n_layer)), biases 0, LayerNorm 1 and 0), all parameters fp32
    /// and the fp32 policy.
    pub fn init(&self, device: &Device) -> Result<Gpt2, GptError> {
        self.validate()?;
        let normal = |std: f64| Initializer::Normal { mean: 0.0, std };
        let projection_std = 0.02 / (2.0 * self.n_layer as f64).sqrt();
        let linear = |d_input, d_output, std| {
            let mut layer = CastedLinearConfig::new(d_input, d_output)
                .with_bias(true)
                .with_layout(WeightLayout::InOut)
                .init(device);
            layer.weight = normal(std).init([d_input, d_output], device);
            layer.bias = Some(Initializer::Zeros.init([d_output], device));
            layer
        };
        let embedding = |rows| {
            EmbeddingConfig::new(rows, self.d_model)
                .with_initializer(normal(0.02))
                .init(device)
        };
        let (d, m) = (self.d_model, self.mlp_width());
        let layer_norm = || LayerNorm::new(d, device);
        let block = || Gpt2Block {
            ln_1: layer_norm(),
            attn: Gpt2Attention {
                c_attn: linear(d, 3 * d, 0.02),
                c_proj: linear(d, d, projection_std),
                n_head: self.n_head,
                dtypes: ComputeDtypes::FP32,
            },
            ln_2: layer_norm(),
            mlp: Gpt2Mlp {
                c_fc: linear(d, m, 0.02),
                c_proj: linear(m, d, projection_std),
                gelu: self.gelu,
            },
        };
        Ok(Gpt2 {
            transformer: Gpt2Transformer {
                wte: embedding(self.vocab_size),
                wpe: embedding(self.max_seq_len),
                h: (0..self.n_layer).map(|_| block()).collect(),
                ln_f: layer_norm(),
            },
            config: self.clone(),
            limits: self.limits(),
            policy: PrecisionPolicy::fp32(),
        })
    }
}

// ----------------------------------------------------------------------------------------------
// LayerNorm with a bias

/// `(x − mean) / √(var + eps) · weight + bias` over the last axis, computed in the accumulation
/// dtype (fp32) and rounded to the input's dtype once, as PyTorch's `layer_norm` does for bf16.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Gain, `[d_model]`, init 1.
    pub weight: Param<Tensor<1>>,
    /// Bias, `[d_model]`, init 0.
    pub bias: Param<Tensor<1>>,
}

impl LayerNorm {
    /// A new LayerNorm of width `d_model`.
    pub fn new(d_model: usize, device: &Device) -> Self {
        Self {
            weight: Initializer::Ones.init([d_model], device),
            bias: Initializer::Zeros.init([d_model], device),
        }
    }

    /// `x` `[B, T, C]` in any float dtype → the same dtype.
    pub fn forward(&self, x: Tensor<3>, eps: f64) -> Tensor<3> {
        let dtype = FloatDType::from(x.dtype());
        let x = x.cast(ACCUMULATION_DTYPE);
        let mean = x.clone().mean_dim(2);
        let centred = x - mean;
        let variance = centred.clone().square().mean_dim(2);
        let normed = centred / variance.add_scalar(eps).sqrt();
        let weight = self
            .weight
            .val()
            .cast(ACCUMULATION_DTYPE)
            .reshape([1, 1, -1]);
        let bias = self.bias.val().cast(ACCUMULATION_DTYPE).reshape([1, 1, -1]);
        (normed * weight + bias).cast(dtype)
    }
}

// ----------------------------------------------------------------------------------------------
// Attention, MLP, block

/// Causal self-attention with the fused `c_attn` (`[C, 3C]`: queries, keys, values side by side)
/// and the output projection `c_proj`, both with bias.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// Queries, keys and values, `[C, 3C]`.
    pub c_attn: CastedLinear,
    /// Output projection, `[C, C]`.
    pub c_proj: CastedLinear,
    #[module(skip)]
    n_head: usize,
    #[module(skip)]
    dtypes: ComputeDtypes,
}

impl PrecisionAware for Gpt2Attention {
    fn with_policy(self, policy: PrecisionPolicy) -> Self {
        Self {
            c_attn: self.c_attn.with_policy(policy),
            c_proj: self.c_proj.with_policy(policy),
            dtypes: policy.compute(),
            ..self
        }
    }
}

impl Gpt2Attention {
    /// `x` `[B, T, C]` (normalised) → `[B, T, C]`; `past` as in the record's attention.
    pub fn forward(&self, x: Tensor<3>, past: Option<&mut LayerCache>) -> Tensor<3> {
        let dtypes = self.dtypes;
        let [b, t, c] = x.dims();
        let qkv = self.c_attn.forward(x);
        // [B, H, T, hd], matmul operands in the matmul dtype.
        let head = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, t, self.n_head, c / self.n_head])
                .swap_dims(1, 2)
                .cast(dtypes.matmul)
        };
        let (k, v) = match past {
            Some(past) => past.append(head(1), head(2)),
            None => (head(1), head(2)),
        };
        let y = brainfloat_ops::causal_attention(head(0), k, v);
        let y = y.cast(dtypes.activation).swap_dims(1, 2).reshape([b, t, c]);
        self.c_proj.forward(y)
    }
}

/// `c_proj(gelu(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// Up projection, `[C, 4C]`.
    pub c_fc: CastedLinear,
    /// Down projection, `[4C, C]`.
    pub c_proj: CastedLinear,
    #[module(skip)]
    gelu: Gelu,
}

impl Gpt2Mlp {
    /// `x` `[B, T, C]` → `[B, T, C]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let up = self.c_fc.forward(x);
        self.c_proj.forward(gelu(up, self.gelu))
    }
}

impl PrecisionAware for Gpt2Mlp {
    fn with_policy(self, policy: PrecisionPolicy) -> Self {
        Self {
            c_fc: self.c_fc.with_policy(policy),
            c_proj: self.c_proj.with_policy(policy),
            ..self
        }
    }
}

/// GELU op by op in the input's dtype, as `transformers` writes `gelu_new` (`Gelu::Tanh`), or
/// Burn's exact GELU (`Gelu::Erf`).
fn gelu(x: Tensor<3>, kind: Gelu) -> Tensor<3> {
    match kind {
        Gelu::Tanh => {
            let inner = (x.clone() + x.clone().powf_scalar(3.0).mul_scalar(0.044715))
                .mul_scalar((2.0 / std::f64::consts::PI).sqrt());
            x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
        }
        Gelu::Erf => burn::tensor::activation::gelu(x),
    }
}

/// `x += attn(ln_1(x)); x += mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// The norm before attention.
    pub ln_1: LayerNorm,
    /// Attention.
    pub attn: Gpt2Attention,
    /// The norm before the MLP.
    pub ln_2: LayerNorm,
    /// MLP.
    pub mlp: Gpt2Mlp,
}

impl PrecisionAware for Gpt2Block {
    fn with_policy(self, policy: PrecisionPolicy) -> Self {
        Self {
            attn: self.attn.with_policy(policy),
            mlp: self.mlp.with_policy(policy),
            ..self
        }
    }
}

/// Embeddings, blocks and the final norm, named as in `GPT2Model`.
#[derive(Module, Debug)]
pub struct Gpt2Transformer {
    /// Token embedding `[vocab, C]`, also the head's weight (tied).
    pub wte: Embedding,
    /// Position embedding `[max_seq_len, C]`.
    pub wpe: Embedding,
    /// The blocks.
    pub h: Vec<Gpt2Block>,
    /// The final LayerNorm.
    pub ln_f: LayerNorm,
}

/// GPT-2 with its language-model head tied to the token embedding (`GPT2LMHeadModel`).
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Embeddings, blocks, final norm.
    pub transformer: Gpt2Transformer,
    #[module(skip)]
    config: Gpt2Config,
    /// What a batch must fit, read from `config` once.
    #[module(skip)]
    limits: Limits,
    #[module(skip)]
    policy: PrecisionPolicy,
}

/// Roles: the tied table is the head's weight, so it is an output matrix (a master weight under
/// the record's policy, trained with the head's rate); positions are an embedding; the blocks'
/// weights hidden matrices with their biases; LayerNorms' gains and biases scalars.
impl ParamRoles for Gpt2 {
    fn param_roles(&self) -> RoleMap {
        let mut roles = RoleMap::default();
        let t = &self.transformer;
        roles
            .add(&t.wte.weight, ParamRole::OutputMatrix)
            .add(&t.wpe.weight, ParamRole::Embedding);
        let mut norm = |ln: &LayerNorm| {
            roles
                .add(&ln.weight, ParamRole::Scalar)
                .add(&ln.bias, ParamRole::Scalar);
        };
        for block in &t.h {
            norm(&block.ln_1);
            norm(&block.ln_2);
        }
        norm(&t.ln_f);
        for block in &t.h {
            for linear in [
                &block.attn.c_attn,
                &block.attn.c_proj,
                &block.mlp.c_fc,
                &block.mlp.c_proj,
            ] {
                linear.add_roles(&mut roles, ParamRole::HiddenMatrix);
            }
        }
        roles
    }
}

impl PrecisionAware for Gpt2 {
    fn with_policy(mut self, policy: PrecisionPolicy) -> Self {
        let blocks = std::mem::take(&mut self.transformer.h);
        self.transformer.h = blocks
            .into_iter()
            .map(|block| block.with_policy(policy))
            .collect();
        self.policy = policy;
        self
    }
}

impl Gpt2 {
    /// The model's shape.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// The final hidden states `[B, T, C]` (after `ln_f`) of `inputs` at positions
    /// `start..start + T`; with `past`, each block's keys and values go into (and come from)
    /// its layer; with `boundaries`, the residual stream after each block is pushed into it.
    fn run_blocks(
        &self,
        inputs: Tensor<2, Int>,
        start: usize,
        mut past: Option<&mut Cache>,
        mut boundaries: Option<&mut Vec<Tensor<3>>>,
    ) -> Tensor<3> {
        let activation = self.policy.activation();
        let t = &self.transformer;
        let [_, len] = inputs.dims();
        let positions =
            Tensor::<1, Int>::arange(start as i64..(start + len) as i64, &inputs.device())
                .reshape([1, len]);
        let mut x =
            t.wte.forward(inputs).cast(activation) + t.wpe.forward(positions).cast(activation);
        let eps = self.config.layer_norm_eps;
        for (index, block) in t.h.iter().enumerate() {
            let past = past.as_mut().map(|cache| cache.kv_mut().layer(index));
            x = x.clone() + block.attn.forward(block.ln_1.forward(x, eps), past);
            x = x.clone() + block.mlp.forward(block.ln_2.forward(x, eps));
            if let Some(boundaries) = boundaries.as_deref_mut() {
                boundaries.push(x.clone());
            }
        }
        t.ln_f.forward(x, eps)
    }

    /// The final hidden states of `inputs`, a whole context, with `boundaries` as in
    /// [`run_blocks`](Self::run_blocks).
    fn hidden(
        &self,
        inputs: Tensor<2, Int>,
        cache: &Cache,
        boundaries: Option<&mut Vec<Tensor<3>>>,
    ) -> Result<Tensor<3>, GptError> {
        cache.check(self.policy.activation(), &inputs.device())?;
        Ok(self.run_blocks(inputs, 0, None, boundaries))
    }

    /// The head: the token embedding, tied.
    fn tied_head(&self) -> Head {
        Head {
            weight: self.transformer.wte.weight.val(),
            bias: None,
        }
    }

    /// The head outside the fused loss: `hidden` `[B, T, C]` → logits in the loss dtype (fp32).
    fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.tied_head()
            .logits(hidden, self.policy.compute())
            .cast(LOSS_DTYPE)
    }
}

impl LanguageModel for Gpt2 {
    fn init(shape: &ModelShape, device: &Device) -> Result<Self, GptError> {
        match shape {
            ModelShape::Gpt2(config) => config.init(device),
            other => Err(wrong_arch(Arch::Gpt2, other)),
        }
    }

    fn shape(&self) -> ModelShape {
        ModelShape::Gpt2(self.config.clone())
    }

    fn policy(&self) -> &PrecisionPolicy {
        &self.policy
    }

    /// The cache a forward pass on `device` reads: GPT-2 learns its positions, so it holds
    /// generation's keys and values only.
    fn cache(&self, device: &Device) -> Cache {
        Cache::new(None, self.policy.activation(), device)
    }

    /// The final hidden states `[B, T, C]` and the residual stream after each block.
    fn hidden_states(
        &self,
        inputs: Tensor<2, Int>,
        cache: &Cache,
    ) -> Result<(Tensor<3>, Vec<Tensor<3>>), GptError> {
        let mut boundaries = Vec::with_capacity(self.transformer.h.len());
        let hidden = self.hidden(inputs, cache, Some(&mut boundaries))?;
        Ok((hidden, boundaries))
    }

    /// Logits `[B, T, vocab]` in fp32.
    fn logits(&self, batch: &Batch, cache: &Cache) -> Result<Tensor<3>, GptError> {
        self.limits.check(batch)?;
        let hidden = self.hidden(batch.inputs().clone(), cache, None)?;
        Ok(self.head(hidden))
    }

    /// Mean fp32 cross-entropy over all `B·T` positions, the tied head fused with the loss.
    fn forward(&self, batch: &Batch, cache: &Cache) -> Result<Tensor<1>, GptError> {
        self.limits.check(batch)?;
        let hidden = self.hidden(batch.inputs().clone(), cache, None)?;
        Ok(head_loss(
            self.tied_head(),
            hidden,
            batch.targets().clone(),
            None,
            self.policy.compute(),
            LOGITS_PER_CHUNK,
        ))
    }

    /// The fp32 logits `[B, vocab]` of the position after the last of `inputs`, as
    /// the record's model's.
    fn next_token_logits(
        &self,
        inputs: Tensor<2, Int>,
        cache: &mut Cache,
    ) -> Result<Tensor<2>, GptError> {
        let [batch, new] = inputs.dims();
        let start = check_context(&inputs, cache.kv(), &self.limits)?;
        cache.check(self.policy.activation(), &inputs.device())?;
        let hidden = self.run_blocks(inputs, start, Some(cache), None);
        let logits = self.head(hidden.narrow(1, new - 1, 1));
        Ok(logits.reshape([batch, self.config.vocab_size]))
    }
}

#[cfg(test)]
mod tests {
    use brainfloat_precision::named_params;

    use super::*;

    #[test]
    fn names_shapes_and_count_are_hugging_faces() {
        let config = Gpt2Config::new(96, 2, 2, 16, 8);
        let model = config
            .init(&brainfloat_test_support::test_device())
            .unwrap();
        assert_eq!(model.num_params(), config.num_params());
        let params = named_params(&model);
        assert_eq!(model.param_roles().len(), params.len());
        let shape = |name: &str| {
            params
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name}"))
                .shape
                .clone()
        };
        assert_eq!(shape("transformer.wte.weight"), [96, 16]);
        assert_eq!(shape("transformer.wpe.weight"), [8, 16]);
        assert_eq!(shape("transformer.h.1.attn.c_attn.weight"), [16, 48]);
        assert_eq!(shape("transformer.h.1.attn.c_attn.bias"), [48]);
        assert_eq!(shape("transformer.h.0.mlp.c_fc.weight"), [16, 64]);
        assert_eq!(shape("transformer.h.0.mlp.c_proj.weight"), [64, 16]);
        assert_eq!(shape("transformer.h.0.ln_1.bias"), [16]);
        assert_eq!(shape("transformer.ln_f.weight"), [16]);
        // GPT-2 small as `transformers` counts it.
        assert_eq!(Gpt2Config::gpt2().num_params(), 124_439_808);
    }
}
