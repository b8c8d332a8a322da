//! The record's GPT in one file, in the record's order: weightless RMSNorm, rotary, attention
//! (QK-norm, rotary, value residual), the ReLU² MLP, the block with its x0 skip, the model with its
//! untied, soft-capped head. Every linear layer is a [`CastedLinear`]; every dtype comes from
//! the [`PrecisionPolicy`] whose compute dtypes `apply_policy` hands to each layer, so no
//! `forward` takes one.

use brainfloat_precision::{
    CastedLinear, CastedLinearConfig, ComputeDtypes, LOSS_DTYPE, ParamRole, ParamRoles,
    PrecisionAware, PrecisionPolicy, RoleMap, softcap,
};
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::batch::{Batch, Limits, check_context};
use crate::cache::{Cache, LayerCache};
use crate::config::GptConfig;
use crate::error::GptError;
use crate::language_model::{Arch, LanguageModel, ModelShape, wrong_arch};
use crate::trace;

// ----------------------------------------------------------------------------------------------
// Weightless RMSNorm

/// PyTorch's `F.rms_norm` default eps for fp32 (machine epsilon), used for every input dtype.
pub const RMS_NORM_EPS: f64 = f32::EPSILON as f64;

/// `x / sqrt(mean(x²) + eps)` over the last axis, without a weight. Computed in fp32 and rounded
/// to the input's dtype once, as PyTorch does for bf16; fused on flex, where the backward keeps
/// the input and one fp32 statistic per row ([`brainfloat_ops::rms_norm`]).
pub fn rms_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    brainfloat_ops::rms_norm(x, RMS_NORM_EPS)
}

// ----------------------------------------------------------------------------------------------
// Rotary position embeddings, half-split layout

/// cos and sin tables for rotary embeddings, `[1, T, 1, head_dim/2]` each, in the activation
/// dtype.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rotary {
    /// Tables for positions `0..seq_len`: `inv_freq = 1/base^(2i/d)` and the angles `t·inv_freq`
    /// in fp32, cos and sin rounded to `dtype`, as the reference does.
    pub fn new(
        seq_len: usize,
        head_dim: usize,
        base: f64,
        dtype: FloatDType,
        device: &Device,
    ) -> Self {
        let half = head_dim / 2;
        let base = base as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let angles: Vec<f32> = (0..seq_len)
            .flat_map(|t| inv_freq.iter().map(move |f| t as f32 * f))
            .collect();
        let table = |values: Vec<f32>| {
            Tensor::<4>::from_data(
                TensorData::new(values, [1, seq_len, 1, half]),
                (device, DType::F32),
            )
            .cast(dtype)
        };
        Self {
            cos: table(angles.iter().map(|a| a.cos()).collect()),
            sin: table(angles.iter().map(|a| a.sin()).collect()),
        }
    }

    /// Positions the tables cover.
    pub fn len(&self) -> usize {
        self.cos.dims()[1]
    }

    /// Whether the tables cover no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tables of positions `start..start + len` (a generation step's new positions).
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        Self {
            cos: self.cos.clone().narrow(1, start, len),
            sin: self.sin.clone().narrow(1, start, len),
        }
    }

    /// Rotates `x` `[B, T, H, head_dim]`: with `x = [x1, x2]` split in halves,
    /// `y = [x1·cos + x2·sin, −x1·sin + x2·cos]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        brainfloat_ops::rotary(x, self.cos.clone(), self.sin.clone())
    }
}

/// Element `i` of a learned vector (the record's `lambdas[i]`, or the one-element `lamb`), in
/// `dtype`, as a one-element tensor.
fn scalar(param: &Param<Tensor<1>>, i: usize, dtype: FloatDType) -> Tensor<1> {
    param.val().narrow(0, i, 1).cast(dtype)
}

/// `factor · x` for a one-element `factor`, as PyTorch's `factor * x` with a 0-d `factor`: the
/// gradient of `factor` is one sum over every element of `x`, accumulated in fp32 and rounded
/// once. (Broadcast over `x`'s dims, autodiff would sum, and round, one dim at a time — and at
/// the record's zero-initialised projections the lambdas' gradient is nothing but that rounding,
/// which Adam turns into a full step: docs/precision.md.)
fn scaled<const D: usize>(factor: Tensor<1>, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    (factor * x.reshape([-1])).reshape(dims)
}

// ----------------------------------------------------------------------------------------------
// Causal self-attention with QK-norm, rotary and the value residual

/// The record's attention: q, k, v, o CastedLinear without bias, `v = (1−λ)·v + λ·v1` with `v1`
/// block 0's values, weightless RMSNorm on q and k, rotary, causal scaled dot product.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// Query projection.
    pub c_q: CastedLinear,
    /// Key projection.
    pub c_k: CastedLinear,
    /// Value projection.
    pub c_v: CastedLinear,
    /// Output projection (zero-initialised).
    pub c_proj: CastedLinear,
    /// Value-residual mix λ (a scalar; stored as `[1]`, saved as PyTorch's 0-d tensor).
    pub lamb: Param<Tensor<1>>,
    #[module(skip)]
    n_head: usize,
    #[module(skip)]
    dtypes: ComputeDtypes,
}

impl PrecisionAware for CausalSelfAttention {
    fn with_policy(self, policy: PrecisionPolicy) -> Self {
        Self {
            c_q: self.c_q.with_policy(policy),
            c_k: self.c_k.with_policy(policy),
            c_v: self.c_v.with_policy(policy),
            c_proj: self.c_proj.with_policy(policy),
            dtypes: policy.compute(),
            ..self
        }
    }
}

impl CausalSelfAttention {
    /// A new attention layer of width `d_model` with `n_head` heads.
    pub fn new(d_model: usize, n_head: usize, device: &Device) -> Self {
        let linear = CastedLinearConfig::new(d_model, d_model);
        Self {
            c_q: linear.init(device),
            c_k: linear.init(device),
            c_v: linear.init(device),
            c_proj: linear.clone().with_zero_init(true).init(device),
            lamb: Param::from_tensor(Tensor::from_floats([0.5], device)),
            n_head,
            dtypes: ComputeDtypes::FP32,
        }
    }

    /// `x` `[B, T, C]` (normalised) → `(y, v1)`; `v1` is `None` in block 0, which provides it.
    /// With `past`, the `T` positions follow the ones it holds: their keys and values are
    /// appended to it and the queries attend to all of them (`rotary` covers the new positions).
    pub fn forward(
        &self,
        x: Tensor<3>,
        v1: Option<Tensor<4>>,
        rotary: &Rotary,
        past: Option<&mut LayerCache>,
    ) -> (Tensor<3>, Tensor<4>) {
        let dtypes = self.dtypes;
        let [b, t, c] = x.dims();
        let heads = [b, t, self.n_head, c / self.n_head];
        let q = self.c_q.forward(x.clone()).reshape(heads);
        let k = self.c_k.forward(x.clone()).reshape(heads);
        let v = self.c_v.forward(x).reshape(heads);

        let v1 = v1.unwrap_or_else(|| v.clone());
        // The record: v = (1 - lamb) * v + lamb * v1.
        let lamb = scalar(&self.lamb, 0, dtypes.activation);
        let v = scaled(lamb.clone().neg().add_scalar(1.0), v) + scaled(lamb, v1.clone());

        let q = rotary.apply(rms_norm(q));
        let k = rotary.apply(rms_norm(k));
        for (name, z) in [("attn.q", &q), ("attn.k", &k), ("attn.v", &v)] {
            trace::record_with(name, || z.clone().swap_dims(1, 2));
        }

        // [B, H, T, hd], matmul operands in the matmul dtype.
        let to_heads = |z: Tensor<4>| z.swap_dims(1, 2).cast(dtypes.matmul);
        let (k, v) = match past {
            Some(past) => past.append(to_heads(k), to_heads(v)),
            None => (to_heads(k), to_heads(v)),
        };
        let y = brainfloat_ops::causal_attention(to_heads(q), k, v);
        trace::record("attn.output", &y);
        let y = y.cast(dtypes.activation).swap_dims(1, 2).reshape([b, t, c]);
        (self.c_proj.forward(y), v1)
    }
}

// ----------------------------------------------------------------------------------------------
// The MLP: 4× width, ReLU², no bias

/// `c_proj(relu(c_fc(x))²)`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Up projection, `[4C, C]`.
    pub c_fc: CastedLinear,
    /// Down projection, `[C, 4C]` (zero-initialised).
    pub c_proj: CastedLinear,
}

impl Mlp {
    /// A new MLP of width `d_model`.
    pub fn new(d_model: usize, device: &Device) -> Self {
        Self {
            c_fc: CastedLinearConfig::new(d_model, 4 * d_model).init(device),
            c_proj: CastedLinearConfig::new(4 * d_model, d_model)
                .with_zero_init(true)
                .init(device),
        }
    }

    /// `x` `[B, T, C]` → `[B, T, C]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let up = self.c_fc.forward(x);
        let hidden = brainfloat_ops::relu_square(up);
        trace::record("mlp.hidden", &hidden);
        self.c_proj.forward(hidden)
    }
}

impl PrecisionAware for Mlp {
    fn with_policy(self, policy: PrecisionPolicy) -> Self {
        Self {
            c_fc: self.c_fc.with_policy(policy),
            c_proj: self.c_proj.with_policy(policy),
        }
    }
}

// ----------------------------------------------------------------------------------------------
// One block

/// `x = λ0·x + λ1·x0; x += attn(norm(x)); x += mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// `[λ0, λ1]`, the x0-skip mix (init `[1, 0]`).
    pub lambdas: Param<Tensor<1>>,
    /// Attention.
    pub attn: CausalSelfAttention,
    /// MLP.
    pub mlp: Mlp,
    #[module(skip)]
    dtypes: ComputeDtypes,
}

impl PrecisionAware for Block {
    fn with_policy(self, policy: PrecisionPolicy) -> Self {
        Self {
            attn: self.attn.with_policy(policy),
            mlp: self.mlp.with_policy(policy),
            dtypes: policy.compute(),
            ..self
        }
    }
}

impl Block {
    /// A new block.
    pub fn new(d_model: usize, n_head: usize, device: &Device) -> Self {
        Self {
            lambdas: Param::from_tensor(Tensor::from_floats([1.0, 0.0], device)),
            attn: CausalSelfAttention::new(d_model, n_head, device),
            mlp: Mlp::new(d_model, device),
            dtypes: ComputeDtypes::FP32,
        }
    }

    /// `x`, `x0` `[B, T, C]` in the activation dtype → `(x, v1)`; `past` as in
    /// [`CausalSelfAttention::forward`].
    pub fn forward(
        &self,
        x: Tensor<3>,
        x0: Tensor<3>,
        v1: Option<Tensor<4>>,
        rotary: &Rotary,
        past: Option<&mut LayerCache>,
    ) -> (Tensor<3>, Tensor<4>) {
        // The record: x = lambdas[0] * x + lambdas[1] * x0.
        let lambda = |i| scalar(&self.lambdas, i, self.dtypes.activation);
        let x = scaled(lambda(0), x) + scaled(lambda(1), x0);
        let (y, v1) = self.attn.forward(rms_norm(x.clone()), v1, rotary, past);
        let x = x + y;
        let x = x.clone() + self.mlp.forward(rms_norm(x));
        (x, v1)
    }
}

// ----------------------------------------------------------------------------------------------
// The model

/// Embedding and blocks, named as in PyTorch's `transformer` ModuleDict.
#[derive(Module, Debug)]
pub struct Transformer {
    /// Token embedding `[vocab, C]`, N(0, 1) init.
    pub wte: Embedding,
    /// The blocks.
    pub h: Vec<Block>,
}

/// The GPT of the CastBf16 record. Field names follow the PyTorch state dict, so the module
/// path of every parameter is its PyTorch name (`transformer.h.0.attn.c_q.weight`).
#[derive(Module, Debug)]
pub struct Gpt {
    /// Embedding and blocks.
    pub transformer: Transformer,
    /// Untied output head `[vocab, C]` (zero-initialised).
    pub lm_head: CastedLinear,
    #[module(skip)]
    config: GptConfig,
    /// What a batch must fit, read from `config` once.
    #[module(skip)]
    limits: Limits,
    #[module(skip)]
    policy: PrecisionPolicy,
}

/// Every parameter's role, stated once for the whole model: it decides the parameter's storage
/// dtype (the policy) and its optimizer (the trainer: Muon for hidden matrices, Adam for the
/// rest). A parameter added to the model must be added here: `apply_policy` refuses a model
/// with a parameter left out, and the test below checks the count.
impl ParamRoles for Gpt {
    fn param_roles(&self) -> RoleMap {
        let mut roles = RoleMap::default();
        roles.add(&self.transformer.wte.weight, ParamRole::Embedding);
        for block in &self.transformer.h {
            let (attn, mlp) = (&block.attn, &block.mlp);
            for linear in [
                &attn.c_q,
                &attn.c_k,
                &attn.c_v,
                &attn.c_proj,
                &mlp.c_fc,
                &mlp.c_proj,
            ] {
                linear.add_roles(&mut roles, ParamRole::HiddenMatrix);
            }
            roles
                .add(&attn.lamb, ParamRole::Scalar)
                .add(&block.lambdas, ParamRole::Scalar);
        }
        self.lm_head.add_roles(&mut roles, ParamRole::OutputMatrix);
        roles
    }
}

impl GptConfig {
    /// Builds the model with the record's initialisation, all parameters fp32 and the fp32
    /// policy; apply another policy with [`brainfloat_precision::apply_policy`].
    pub fn init(&self, device: &Device) -> Result<Gpt, GptError> {
        self.validate()?;
        Ok(Gpt {
            transformer: Transformer {
                wte: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
                h: (0..self.n_layer)
                    .map(|_| Block::new(self.d_model, self.n_head, device))
                    .collect(),
            },
            lm_head: CastedLinearConfig::new(self.d_model, self.vocab_size)
                .with_zero_init(true)
                .init(device),
            config: self.clone(),
            limits: self.limits(),
            policy: PrecisionPolicy::fp32(),
        })
    }
}

impl PrecisionAware for Gpt {
    fn with_policy(self, policy: PrecisionPolicy) -> Self {
        let Transformer { wte, h } = self.transformer;
        let h = h
            .into_iter()
            .map(|block| block.with_policy(policy))
            .collect();
        Self {
            transformer: Transformer { wte, h },
            lm_head: self.lm_head.with_policy(policy),
            policy,
            ..self
        }
    }
}

impl Gpt {
    /// The model's shape.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// The embedding, the blocks and the final norm over `inputs` at the positions `rotary`
    /// covers; with `past`, each block's keys and values go into (and come from) its layer;
    /// with `boundaries`, the residual stream after each block is pushed into it (a training
    /// step keeps none).
    fn run_blocks(
        &self,
        inputs: Tensor<2, Int>,
        rotary: &Rotary,
        mut past: Option<&mut Cache>,
        mut boundaries: Option<&mut Vec<Tensor<3>>>,
    ) -> Tensor<3> {
        let x = self
            .transformer
            .wte
            .forward(inputs)
            .cast(self.policy.activation());
        let x0 = rms_norm(x);
        let mut x = x0.clone();
        let mut v1 = None;
        for (index, block) in self.transformer.h.iter().enumerate() {
            let past = past.as_mut().map(|cache| cache.kv_mut().layer(index));
            let (out, v) = trace::scoped(
                || format!("blocks.{index}"),
                || {
                    trace::record("input", &x);
                    let (out, v) = block.forward(x, x0.clone(), v1, rotary, past);
                    trace::record("output", &out);
                    (out, v)
                },
            );
            x = out;
            v1 = Some(v);
            if let Some(boundaries) = boundaries.as_deref_mut() {
                boundaries.push(x.clone());
            }
        }
        let final_norm = rms_norm(x);
        trace::record("final_norm", &final_norm);
        final_norm
    }

    /// The final hidden states of `inputs`, a whole context, with `boundaries` as in
    /// [`run_blocks`](Self::run_blocks).
    fn hidden(
        &self,
        inputs: Tensor<2, Int>,
        cache: &Cache,
        boundaries: Option<&mut Vec<Tensor<3>>>,
    ) -> Result<Tensor<3>, GptError> {
        let seq_len = inputs.dims()[1];
        let rotary = cache.rotary(0, seq_len, self.policy.activation(), &inputs.device())?;
        Ok(self.run_blocks(inputs, &rotary, None, boundaries))
    }

    /// The head outside the fused loss: `hidden` `[B, T, C]` → logits soft-capped in the
    /// activation dtype, then cast to the loss dtype (fp32), as in the record.
    fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let logits = self.lm_head.forward(hidden);
        softcap(logits, self.config.logit_softcap).cast(LOSS_DTYPE)
    }

    fn check(&self, batch: &Batch) -> Result<(), GptError> {
        self.limits.check(batch)
    }
}

impl LanguageModel for Gpt {
    fn init(shape: &ModelShape, device: &Device) -> Result<Self, GptError> {
        match shape {
            ModelShape::Record(config) => config.init(device),
            other => Err(wrong_arch(Arch::Record, other)),
        }
    }

    fn shape(&self) -> ModelShape {
        ModelShape::Record(self.config.clone())
    }

    fn policy(&self) -> &PrecisionPolicy {
        &self.policy
    }

    /// The cache a forward pass on `device` reads: the rotary tables for every position up to
    /// `max_seq_len`, in the activation dtype, built here once.
    fn cache(&self, device: &Device) -> Cache {
        let activation = self.policy.activation();
        let config = &self.config;
        let rotary = Rotary::new(
            config.max_seq_len,
            config.head_dim(),
            config.rope_base,
            activation,
            device,
        );
        Cache::new(Some(rotary), activation, device)
    }

    /// The final hidden states `[B, T, C]` (after the last RMSNorm) in the activation dtype, and
    /// the residual stream after each block (for inspecting dtypes at block boundaries).
    fn hidden_states(
        &self,
        inputs: Tensor<2, Int>,
        cache: &Cache,
    ) -> Result<(Tensor<3>, Vec<Tensor<3>>), GptError> {
        let mut boundaries = Vec::with_capacity(self.transformer.h.len());
        let hidden = self.hidden(inputs, cache, Some(&mut boundaries))?;
        Ok((hidden, boundaries))
    }

    /// The soft-capped fp32 logits `[B, vocab]` of the position after the last of `inputs`
    /// `[B, T]`: what generation samples from.
    ///
    /// `inputs` are the positions after those `cache` holds (all of the context when it holds
    /// none): only they are computed, their keys and values appended (one position per
    /// generated token after the prompt). Refused when the context would pass the model's
    /// `max_seq_len` or an id is outside its vocabulary.
    fn next_token_logits(
        &self,
        inputs: Tensor<2, Int>,
        cache: &mut Cache,
    ) -> Result<Tensor<2>, GptError> {
        let [batch, new] = inputs.dims();
        let start = check_context(&inputs, cache.kv(), &self.limits)?;
        let rotary = cache.rotary(start, new, self.policy.activation(), &inputs.device())?;
        let hidden = self.run_blocks(inputs, &rotary, Some(cache), None);
        let logits = self.head(hidden.narrow(1, new - 1, 1));
        Ok(logits.reshape([batch, self.config.vocab_size]))
    }

    /// Soft-capped logits `[B, T, vocab]` in fp32, for evaluation and sampling. The soft-cap runs
    /// in the activation dtype, then the logits are cast to fp32, as in the record.
    fn logits(&self, batch: &Batch, cache: &Cache) -> Result<Tensor<3>, GptError> {
        self.check(batch)?;
        let hidden = self.hidden(batch.inputs().clone(), cache, None)?;
        Ok(self.head(hidden))
    }

    /// The record's loss: mean fp32 cross-entropy of the soft-capped logits over all `B·T`
    /// positions. A one-element fp32 tensor.
    ///
    /// The head and the loss run fused ([`CastedLinear::softcapped_cross_entropy`]): the
    /// logits never enter the autodiff graph.
    fn forward(&self, batch: &Batch, cache: &Cache) -> Result<Tensor<1>, GptError> {
        self.check(batch)?;
        let hidden = self.hidden(batch.inputs().clone(), cache, None)?;
        Ok(self.lm_head.softcapped_cross_entropy(
            hidden,
            batch.targets().clone(),
            Some(self.config.logit_softcap),
        ))
    }
}

#[cfg(test)]
mod tests {
    use brainfloat_precision::{Component, named_params};

    use super::*;

    #[test]
    fn every_parameter_has_exactly_one_role() {
        let config = GptConfig::new(64, 3, 2, 16, 8);
        let model = config
            .init(&brainfloat_test_support::test_device())
            .unwrap();
        let roles = model.param_roles();
        let params = named_params(&model);
        assert_eq!(roles.len(), params.len(), "one role per parameter, no more");
        for p in &params {
            assert_ne!(p.component, Component::Other, "{} has no role", p.name);
        }
        let count = |role| {
            let mut count = 0;
            model.visit(&mut CountRole {
                roles: &roles,
                role,
                count: &mut count,
            });
            count
        };
        assert_eq!(count(ParamRole::Embedding), 1);
        assert_eq!(count(ParamRole::HiddenMatrix), 6 * 3);
        assert_eq!(count(ParamRole::OutputMatrix), 1);
        assert_eq!(count(ParamRole::Scalar), 2 * 3);
        assert_eq!(count(ParamRole::LinearBias), 0);
    }

    struct CountRole<'a> {
        roles: &'a RoleMap,
        role: ParamRole,
        count: &'a mut usize,
    }

    impl burn::module::ModuleVisitor for CountRole<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            *self.count += usize::from(self.roles.role(&param.id) == Some(self.role));
        }
    }
}
