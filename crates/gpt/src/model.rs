//! The record's GPT.

use brainfloat_precision::{
    CastedLinear, CastedLinearConfig, ParamRole, ParamRoles, PrecisionAware, PrecisionPolicy,
    RoleMap, softcap,
};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, FloatDType, Int, Tensor};

use crate::batch::Batch;
use crate::block::Block;
use crate::config::GptConfig;
use crate::error::GptError;
use crate::norm::rms_norm;
use crate::rotary::Rotary;

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
            policy: PrecisionPolicy::fp32(),
        })
    }
}

impl PrecisionAware for Gpt {
    fn with_policy(mut self, policy: PrecisionPolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl Gpt {
    /// The model's shape.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// The precision policy the forward pass runs under.
    pub fn policy(&self) -> &PrecisionPolicy {
        &self.policy
    }

    /// The final hidden states `[B, T, C]` (after the last RMSNorm) in the activation dtype, and
    /// the residual stream after each block (for inspecting dtypes at block boundaries).
    pub fn hidden_states(&self, inputs: Tensor<2, Int>) -> (Tensor<3>, Vec<Tensor<3>>) {
        let policy = &self.policy;
        let seq_len = inputs.dims()[1];
        let device = inputs.device();
        let rotary = Rotary::new(
            seq_len,
            self.config.head_dim(),
            self.config.rope_base,
            policy.activation(),
            &device,
        );
        let x = self
            .transformer
            .wte
            .forward(inputs)
            .cast(policy.activation());
        let x0 = rms_norm(x);
        let mut x = x0.clone();
        let mut v1 = None;
        let mut boundaries = Vec::with_capacity(self.transformer.h.len());
        for block in &self.transformer.h {
            let (out, v) = block.forward(x, x0.clone(), v1, &rotary, policy);
            x = out;
            v1 = Some(v);
            boundaries.push(x.clone());
        }
        (rms_norm(x), boundaries)
    }

    /// Soft-capped logits `[B, T, vocab]` in fp32, for evaluation and sampling. The soft-cap runs
    /// in the activation dtype, then the logits are cast to fp32, as in the record.
    pub fn logits(&self, batch: &Batch) -> Result<Tensor<3>, GptError> {
        let logits = self.raw_logits(batch)?;
        Ok(softcap(logits, self.config.logit_softcap).cast(FloatDType::F32))
    }

    /// The record's loss: mean fp32 cross-entropy of the soft-capped logits over all `B·T`
    /// positions. A one-element fp32 tensor.
    ///
    /// The head and the loss run fused ([`CastedLinear::softcapped_cross_entropy`]): the
    /// logits never enter the autodiff graph.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor<1>, GptError> {
        self.check(batch)?;
        let (hidden, _) = self.hidden_states(batch.inputs.clone());
        Ok(self.lm_head.softcapped_cross_entropy(
            hidden,
            batch.targets.clone(),
            Some(self.config.logit_softcap),
            &self.policy,
        ))
    }

    /// Logits before the soft-cap, in the activation dtype.
    fn raw_logits(&self, batch: &Batch) -> Result<Tensor<3>, GptError> {
        self.check(batch)?;
        let (hidden, _) = self.hidden_states(batch.inputs.clone());
        Ok(self.lm_head.forward_under(hidden, &self.policy))
    }

    fn check(&self, batch: &Batch) -> Result<(), GptError> {
        let [_, seq_len] = batch.dims();
        if seq_len > self.config.max_seq_len {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "sequence length {seq_len} exceeds the model's maximum of {}",
                    self.config.max_seq_len
                ),
            });
        }
        if batch.max_token as usize >= self.config.vocab_size {
            return Err(GptError::InvalidBatch {
                reason: format!(
                    "token id {} is outside the model's vocabulary of {} (ids 0..{})",
                    batch.max_token,
                    self.config.vocab_size,
                    self.config.vocab_size - 1
                ),
            });
        }
        Ok(())
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
