//! What the trainer, evaluation and generation need of a model, whatever its architecture:
//! [`LanguageModel`], implemented by the record's [`Gpt`] and by [`Gpt2`] in their own files; the
//! shape of either ([`ModelShape`], what a weights file we write carries in its metadata); and
//! the one place an architecture chosen at run time becomes a model type
//! ([`ModelShape::dispatch`]: `run::<Gpt>` or `run::<Gpt2>`).

use brainfloat_choice::choice;
use brainfloat_precision::{ParamRoles, PrecisionAware, PrecisionPolicy};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::cache::Cache;
use crate::config::{GptConfig, ParamSize};
use crate::error::GptError;
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::model::Gpt;

/// A causal language model trained with the record's precision machinery: parameters with
/// roles, a precision policy, a loss and the logits generation samples from.
pub trait LanguageModel: ParamRoles + PrecisionAware {
    /// Builds the model of `shape` (fp32 parameters, the fp32 policy); refused for the shape of
    /// another architecture.
    fn init(shape: &ModelShape, device: &Device) -> Result<Self, GptError>;

    /// The model's architecture and shape.
    fn shape(&self) -> ModelShape;

    /// The precision policy the forward pass runs under.
    fn policy(&self) -> &PrecisionPolicy;

    /// The cache the forward passes on `device` read, built once (after `apply_policy`: its
    /// tables are in the activation dtype).
    fn cache(&self, device: &Device) -> Cache;

    /// Mean fp32 cross-entropy of the next-token predictions over all `B·T` positions: a
    /// one-element fp32 tensor.
    fn forward(&self, batch: &Batch, cache: &Cache) -> Result<Tensor<1>, GptError>;

    /// Logits `[B, T, vocab]` in fp32.
    fn logits(&self, batch: &Batch, cache: &Cache) -> Result<Tensor<3>, GptError>;

    /// The final hidden states `[B, T, C]` in the activation dtype, and the residual stream
    /// after each block (for inspecting dtypes at block boundaries).
    fn hidden_states(
        &self,
        inputs: Tensor<2, Int>,
        cache: &Cache,
    ) -> Result<(Tensor<3>, Vec<Tensor<3>>), GptError>;

    /// The fp32 logits `[B, vocab]` of the position after the last of `inputs` `[B, T]`:
    /// `inputs` follow the positions `cache` holds (all of the context when it holds none),
    /// and their keys and values are appended.
    fn next_token_logits(
        &self,
        inputs: Tensor<2, Int>,
        cache: &mut Cache,
    ) -> Result<Tensor<2>, GptError>;
}

/// The architectures: a [`ModelShape`]'s tag, as configs (`model.arch`) and files name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arch {
    /// The CastBf16 record's GPT ([`Gpt`]).
    #[default]
    Record,
    /// Hugging Face's GPT-2 ([`Gpt2`]).
    Gpt2,
}

choice!(Arch, "architecture", { Record => "record", Gpt2 => "gpt2" });

/// A model's architecture and shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum ModelShape {
    /// The record's GPT.
    Record(GptConfig),
    /// GPT-2.
    Gpt2(Gpt2Config),
}

/// `$body` with `$config` bound to the architecture's own shape.
macro_rules! each_shape {
    ($self:expr, $config:ident => $body:expr) => {
        match $self {
            ModelShape::Record($config) => $body,
            ModelShape::Gpt2($config) => $body,
        }
    };
}

impl ModelShape {
    /// The architecture.
    pub fn arch(&self) -> Arch {
        match self {
            ModelShape::Record(_) => Arch::Record,
            ModelShape::Gpt2(_) => Arch::Gpt2,
        }
    }

    /// Checks that the shape is buildable.
    pub fn validate(&self) -> Result<(), GptError> {
        each_shape!(self, config => config.validate())
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        each_shape!(self, config => config.vocab_size)
    }

    /// Longest sequence the model accepts.
    pub fn max_seq_len(&self) -> usize {
        each_shape!(self, config => config.max_seq_len)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        each_shape!(self, config => config.num_params())
    }

    /// Every parameter's role and element count, before any tensor exists.
    pub fn param_sizes(&self) -> Vec<ParamSize> {
        each_shape!(self, config => config.param_sizes())
    }

    /// Training FLOPs per token at sequence length `seq_len`.
    pub fn training_flops_per_token(&self, seq_len: usize) -> u64 {
        each_shape!(self, config => config.training_flops_per_token(seq_len))
    }

    /// The shape in words.
    pub fn describe(&self) -> String {
        each_shape!(self, config => config.describe())
    }

    /// The shape as JSON, as a weights file's metadata carries it (`{"arch": "gpt2", ...}`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a shape is plain data")
    }

    /// The shape written by [`to_json`](Self::to_json).
    pub fn from_json(text: &str) -> Result<Self, GptError> {
        let shape: ModelShape =
            serde_json::from_str(text).map_err(|err| GptError::InvalidConfig {
                field: "arch",
                reason: format!("not a model shape: {err}"),
            })?;
        shape.validate()?;
        Ok(shape)
    }
}

/// The error of a model type asked to build another architecture's shape.
pub(crate) fn wrong_arch(wanted: Arch, shape: &ModelShape) -> GptError {
    GptError::InvalidConfig {
        field: "arch",
        reason: format!(
            "this model is the {wanted} architecture, the shape is {}",
            shape.arch()
        ),
    }
}

/// Work generic over the model type, run for the architecture a config or a file names
/// ([`ModelShape::dispatch`]): a command's `run::<Gpt>` or `run::<Gpt2>`.
pub trait ArchWork {
    /// What the work gives.
    type Output;

    /// Runs the work with the model type `M`.
    fn run<M: LanguageModel>(self) -> Self::Output;
}

impl ModelShape {
    /// Runs `work` with the model type of this shape's architecture: the one match from an
    /// architecture chosen at run time to a model type.
    pub fn dispatch<W: ArchWork>(&self, work: W) -> W::Output {
        match self {
            ModelShape::Record(_) => work.run::<Gpt>(),
            ModelShape::Gpt2(_) => work.run::<Gpt2>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use brainfloat_precision::RoleMap;

    use super::*;

    /// Every float parameter's id and element count.
    struct Sizes(Vec<(burn::module::ParamId, usize)>);

    impl burn::module::ModuleVisitor for Sizes {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.push((param.id, param.val().shape().num_elements()));
        }
    }

    /// The sizes a shape declares are the built model's, role by role and in its order: the
    /// memory estimate counts what will be allocated.
    #[test]
    fn a_shapes_parameter_sizes_are_the_built_models() {
        struct Built<'a>(&'a ModelShape);
        impl ArchWork for Built<'_> {
            type Output = (RoleMap, Sizes);
            fn run<M: LanguageModel>(self) -> Self::Output {
                let model = M::init(self.0, &Device::default()).unwrap();
                let mut sizes = Sizes(Vec::new());
                model.visit(&mut sizes);
                (model.param_roles(), sizes)
            }
        }
        for shape in [
            ModelShape::Record(GptConfig::tiny()),
            ModelShape::Gpt2(Gpt2Config::new(96, 2, 2, 16, 8).with_d_mlp(Some(40))),
        ] {
            let (roles, sizes) = shape.dispatch(Built(&shape));
            let mut built: Vec<(String, usize)> = sizes
                .0
                .iter()
                .map(|(id, n)| (roles.role(id).unwrap().to_string(), *n))
                .collect();
            let mut declared: Vec<(String, usize)> = shape
                .param_sizes()
                .iter()
                .map(|p| (p.role.to_string(), p.elements))
                .collect();
            built.sort();
            declared.sort();
            assert_eq!(declared, built, "{}", shape.describe());
            assert_eq!(
                shape.num_params(),
                built.iter().map(|(_, n)| n).sum::<usize>()
            );
        }
    }

    #[test]
    fn a_shape_round_trips_through_its_json() {
        for shape in [
            ModelShape::Record(GptConfig::tiny()),
            ModelShape::Gpt2(Gpt2Config::new(96, 2, 2, 16, 8).with_d_mlp(Some(40))),
        ] {
            let text = shape.to_json();
            assert!(
                text.contains(&format!("\"arch\":\"{}\"", shape.arch())),
                "{text}"
            );
            assert_eq!(ModelShape::from_json(&text).unwrap(), shape);
        }
        let err = ModelShape::from_json(r#"{"arch":"llama"}"#).unwrap_err();
        assert!(err.to_string().contains("not a model shape"), "{err}");
    }

    #[test]
    fn a_model_of_one_arch_refuses_the_others_shape() {
        let device = brainfloat_test_support::test_device();
        let err = Gpt2::init(&ModelShape::Record(GptConfig::tiny()), &device).unwrap_err();
        assert!(err.to_string().contains("gpt2 architecture"), "{err}");
        let err = Gpt::init(&ModelShape::Gpt2(Gpt2Config::new(96, 2, 2, 16, 8)), &device);
        assert!(err.unwrap_err().to_string().contains("record architecture"));
    }

    /// Dispatch picks the shape's own model type.
    #[test]
    fn dispatch_runs_the_shapes_model_type() {
        struct TypeName;
        impl ArchWork for TypeName {
            type Output = &'static str;
            fn run<M: LanguageModel>(self) -> &'static str {
                std::any::type_name::<M>()
            }
        }
        let record = ModelShape::Record(GptConfig::tiny()).dispatch(TypeName);
        let gpt2 = ModelShape::Gpt2(Gpt2Config::new(96, 2, 2, 16, 8)).dispatch(TypeName);
        assert!(
            record.ends_with("::Gpt") && gpt2.ends_with("::Gpt2"),
            "{record} {gpt2}"
        );
    }
}
