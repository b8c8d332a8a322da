//! The precision policy: the one place that decides every dtype of a model.

use std::fmt;
use std::str::FromStr;

use brainfloat_choice::choice;
use burn::tensor::{DType, Device, FloatDType};
use serde::{Deserialize, Serialize};

use crate::error::PrecisionError;

/// Dtype in which reductions (norms, softmax statistics, the loss) accumulate, whatever the
/// activation dtype: PyTorch upcasts bf16 to fp32 for these, and so do we.
pub const ACCUMULATION_DTYPE: FloatDType = FloatDType::F32;

/// The part of a model a dtype applies to.
///
/// Storage components say how a parameter is kept; compute components say in which dtype the
/// forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Master weights (and biases) of every [`CastedLinear`](crate::CastedLinear).
    Linear,
    /// Token-embedding tables.
    Embedding,
    /// Small parameters of rank ≤ 1 outside linears and embeddings (the record's lambdas).
    Scalars,
    /// Any other parameter (for example a plain `burn::nn::Linear` in a user's model): the
    /// record casts the whole model, so these follow the activation dtype.
    Other,
    /// Operands of the matrix products (linear layers and attention).
    Matmul,
    /// The residual stream and every activation between layers.
    Activation,
}

impl Component {
    /// Every component, in report order.
    pub const ALL: [Component; 6] = [
        Component::Linear,
        Component::Embedding,
        Component::Scalars,
        Component::Other,
        Component::Matmul,
        Component::Activation,
    ];

    /// The name used in policy strings and reports.
    pub fn name(self) -> &'static str {
        match self {
            Component::Linear => "linear",
            Component::Embedding => "embedding",
            Component::Scalars => "scalars",
            Component::Other => "other",
            Component::Matmul => "matmul",
            Component::Activation => "activation",
        }
    }
}

choice!(Component, "precision component", own names);

/// How an optimizer step writes a new value into bf16 storage (weights and optimizer state);
/// values stored in fp32 are written exactly whatever the rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateRounding {
    /// Round to nearest, what storing into a bf16 tensor does: an update below half an ulp of
    /// its weight is lost.
    Nearest,
    /// Stochastic rounding of every new weight and optimizer-state value: up or down with
    /// probability by distance, so that small updates survive on average. The random bits come
    /// from (seed, step, parameter, element), so a resumed run rounds as the uninterrupted one.
    Stochastic,
    /// Kahan summation: a bf16 compensation buffer per bf16 parameter carries each update's
    /// rounding error into the next update; optimizer state rounds to nearest.
    Kahan,
}

/// The dtypes a layer's forward pass computes in: what [`apply_policy`](crate::apply_policy)
/// hands each layer (through [`PrecisionAware`](crate::PrecisionAware)), so that a layer holds
/// the two dtypes it uses rather than the whole policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeDtypes {
    /// Operands of the matrix products (linear layers and attention).
    pub matmul: FloatDType,
    /// The residual stream and every activation between layers.
    pub activation: FloatDType,
}

impl ComputeDtypes {
    /// fp32 throughout: a layer's dtypes before a policy is applied.
    pub const FP32: ComputeDtypes = ComputeDtypes {
        matmul: FloatDType::F32,
        activation: FloatDType::F32,
    };
}

/// Dtype of the loss under every policy.
pub const LOSS_DTYPE: FloatDType = FloatDType::F32;

/// The presets: the fp32 reference, the record's autocast baseline, the record itself, and
/// three pure-bf16 presets (weights, gradients and optimizer state all bf16) that differ in how
/// updates are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Preset {
    /// Everything in fp32.
    Fp32,
    /// fp32 parameters and activations; matmul operands cast to bf16, results cast back to fp32.
    Autocast,
    /// The record: bf16 activations, embedding and scalars; fp32 CastedLinear master weights.
    Bf16,
    /// Every parameter in bf16 (the record's dtypes with `linear=bf16`), updates rounded to
    /// nearest: the naive baseline.
    Bf16Pure,
    /// [`Preset::Bf16Pure`]'s storage with stochastic rounding ([`UpdateRounding::Stochastic`]).
    Bf16Sr,
    /// [`Preset::Bf16Pure`]'s storage with Kahan compensation ([`UpdateRounding::Kahan`]).
    Bf16Kahan,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 6] = [
        Preset::Fp32,
        Preset::Autocast,
        Preset::Bf16,
        Preset::Bf16Pure,
        Preset::Bf16Sr,
        Preset::Bf16Kahan,
    ];

    /// The record's three presets: those the PyTorch reference computes too.
    pub const RECORD: [Preset; 3] = [Preset::Fp32, Preset::Autocast, Preset::Bf16];

    /// The preset's name, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Fp32 => "fp32",
            Preset::Autocast => "autocast",
            Preset::Bf16 => "bf16",
            Preset::Bf16Pure => "bf16-pure",
            Preset::Bf16Sr => "bf16-sr",
            Preset::Bf16Kahan => "bf16-kahan",
        }
    }

    /// How the preset's optimizer rounds updates into bf16 storage.
    pub fn update_rounding(self) -> UpdateRounding {
        match self {
            Preset::Bf16Sr => UpdateRounding::Stochastic,
            Preset::Bf16Kahan => UpdateRounding::Kahan,
            _ => UpdateRounding::Nearest,
        }
    }
}

choice!(Preset, "precision preset", own names);

/// Which dtype every component of a model uses: storage of each parameter kind and the dtypes
/// of the forward pass. The loss is always computed in fp32.
///
/// Built from a [`Preset`], optionally with per-component overrides, or parsed from a string
/// such as `"bf16"` or `"bf16,embedding=fp32"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PrecisionPolicy {
    preset: Preset,
    linear: FloatDType,
    embedding: FloatDType,
    scalars: FloatDType,
    matmul: FloatDType,
    activation: FloatDType,
}

impl PrecisionPolicy {
    /// The policy of a preset, without overrides.
    pub fn preset(preset: Preset) -> Self {
        use FloatDType::{BF16, F32};
        let (linear, embedding, scalars, matmul, activation) = match preset {
            Preset::Fp32 => (F32, F32, F32, F32, F32),
            Preset::Autocast => (F32, F32, F32, BF16, F32),
            Preset::Bf16 => (F32, BF16, BF16, BF16, BF16),
            Preset::Bf16Pure | Preset::Bf16Sr | Preset::Bf16Kahan => (BF16, BF16, BF16, BF16, BF16),
        };
        Self {
            preset,
            linear,
            embedding,
            scalars,
            matmul,
            activation,
        }
    }

    /// All fp32.
    pub fn fp32() -> Self {
        Self::preset(Preset::Fp32)
    }

    /// The record's autocast baseline.
    pub fn autocast() -> Self {
        Self::preset(Preset::Autocast)
    }

    /// The record (CastedLinear + bf16 activations).
    pub fn bf16() -> Self {
        Self::preset(Preset::Bf16)
    }

    /// The same policy with one component's dtype replaced.
    pub fn with(mut self, component: Component, dtype: FloatDType) -> Self {
        match component {
            Component::Linear => self.linear = dtype,
            Component::Embedding => self.embedding = dtype,
            Component::Scalars => self.scalars = dtype,
            Component::Matmul => self.matmul = dtype,
            Component::Activation | Component::Other => self.activation = dtype,
        }
        self
    }

    /// The policy to run a trained model under: linear weights stored in the matmul dtype, the
    /// dtype the forward pass casts them to at every use. Master weights serve the optimizer's
    /// small updates; without one, the cast is the same rounding done once, so the logits are
    /// the same and generation does not convert every weight for every token.
    pub fn for_inference(self) -> Self {
        self.with(Component::Linear, self.matmul)
    }

    /// The dtype of a component.
    pub fn dtype(&self, component: Component) -> FloatDType {
        match component {
            Component::Linear => self.linear,
            Component::Embedding => self.embedding,
            Component::Scalars => self.scalars,
            Component::Matmul => self.matmul,
            Component::Activation | Component::Other => self.activation,
        }
    }

    /// Storage dtype of CastedLinear master weights.
    pub fn linear(&self) -> FloatDType {
        self.linear
    }

    /// Storage dtype of embedding tables.
    pub fn embedding(&self) -> FloatDType {
        self.embedding
    }

    /// Storage dtype of scalar parameters.
    pub fn scalars(&self) -> FloatDType {
        self.scalars
    }

    /// Dtype of matmul operands.
    pub fn matmul(&self) -> FloatDType {
        self.matmul
    }

    /// Dtype of activations.
    pub fn activation(&self) -> FloatDType {
        self.activation
    }

    /// How the optimizer rounds updates into bf16 storage (the preset's).
    pub fn update_rounding(&self) -> UpdateRounding {
        self.preset.update_rounding()
    }

    /// Dtype of the loss: always fp32 ([`LOSS_DTYPE`]).
    pub fn loss(&self) -> FloatDType {
        LOSS_DTYPE
    }

    /// The dtypes the forward pass computes in, as each layer holds them.
    pub fn compute(&self) -> ComputeDtypes {
        ComputeDtypes {
            matmul: self.matmul,
            activation: self.activation,
        }
    }

    /// Every distinct dtype this policy uses.
    pub fn dtypes(&self) -> Vec<FloatDType> {
        let mut all = vec![self.loss()];
        for c in Component::ALL {
            let d = self.dtype(c);
            if !all.contains(&d) {
                all.push(d);
            }
        }
        all
    }

    /// Checks that `device` supports every dtype of the policy.
    pub fn check_device(&self, device: &Device) -> Result<(), PrecisionError> {
        match self
            .dtypes()
            .into_iter()
            .find(|d| !device.supports_dtype(DType::from(*d)))
        {
            Some(dtype) => Err(PrecisionError::UnsupportedDtype {
                dtype: dtype_name(dtype),
                device: format!("{device:?}"),
                policy: self.to_string(),
            }),
            None => Ok(()),
        }
    }
}

impl Default for PrecisionPolicy {
    fn default() -> Self {
        Self::bf16()
    }
}

/// Short name of a float dtype, as written in policy strings (`fp32`, `bf16`, ...).
pub fn dtype_name(dtype: FloatDType) -> &'static str {
    match dtype {
        FloatDType::F64 => "fp64",
        FloatDType::F32 => "fp32",
        FloatDType::Flex32 => "flex32",
        FloatDType::F16 => "fp16",
        FloatDType::BF16 => "bf16",
    }
}

/// Parses a float dtype name (`fp32`, `f32`, `float32`, `bf16`, `bfloat16`, `fp16`, `f16`, `fp64`).
pub fn parse_dtype(name: &str) -> Result<FloatDType, PrecisionError> {
    Ok(match name {
        "fp32" | "f32" | "float32" => FloatDType::F32,
        "bf16" | "bfloat16" => FloatDType::BF16,
        "fp16" | "f16" | "float16" => FloatDType::F16,
        "fp64" | "f64" | "float64" => FloatDType::F64,
        _ => {
            return Err(PrecisionError::UnknownDtype {
                name: name.to_string(),
            });
        }
    })
}

impl fmt::Display for PrecisionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = Self::preset(self.preset);
        f.write_str(self.preset.name())?;
        for c in Component::ALL {
            if c != Component::Other && self.dtype(c) != base.dtype(c) {
                write!(f, ",{}={}", c, dtype_name(self.dtype(c)))?;
            }
        }
        Ok(())
    }
}

impl FromStr for PrecisionPolicy {
    type Err = PrecisionError;

    /// `preset[,component=dtype]*`, for example `bf16,embedding=fp32`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',').map(str::trim);
        let preset: Preset = parts.next().unwrap_or_default().parse()?;
        let mut policy = Self::preset(preset);
        for part in parts {
            let (component, dtype) =
                part.split_once('=')
                    .ok_or_else(|| PrecisionError::MalformedOverride {
                        text: part.to_string(),
                    })?;
            policy = policy.with(component.trim().parse()?, parse_dtype(dtype.trim())?);
        }
        Ok(policy)
    }
}

/// Policies are written as they are parsed (`"bf16,embedding=fp32"`), in configs, checkpoint
/// records and reports alike.
impl TryFrom<String> for PrecisionPolicy {
    type Error = PrecisionError;

    fn try_from(text: String) -> Result<Self, PrecisionError> {
        text.parse()
    }
}

impl From<PrecisionPolicy> for String {
    fn from(policy: PrecisionPolicy) -> String {
        policy.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FloatDType::{BF16, F32};

    #[test]
    fn presets_match_the_design_table() {
        let table = [
            (Preset::Fp32, [F32, F32, F32, F32, F32]),
            (Preset::Autocast, [F32, F32, F32, BF16, F32]),
            (Preset::Bf16, [F32, BF16, BF16, BF16, BF16]),
            (Preset::Bf16Pure, [BF16, BF16, BF16, BF16, BF16]),
            (Preset::Bf16Sr, [BF16, BF16, BF16, BF16, BF16]),
            (Preset::Bf16Kahan, [BF16, BF16, BF16, BF16, BF16]),
        ];
        for (preset, [linear, embedding, scalars, matmul, activation]) in table {
            let p = PrecisionPolicy::preset(preset);
            assert_eq!(p.linear(), linear, "{preset}");
            assert_eq!(p.embedding(), embedding, "{preset}");
            assert_eq!(p.scalars(), scalars, "{preset}");
            assert_eq!(p.matmul(), matmul, "{preset}");
            assert_eq!(p.activation(), activation, "{preset}");
            assert_eq!(p.loss(), F32, "{preset}");
        }
    }

    #[test]
    fn the_pure_presets_share_storage_and_differ_in_rounding() {
        let pure: PrecisionPolicy = "bf16-pure".parse().unwrap();
        let record_with_bf16_linears: PrecisionPolicy = "bf16,linear=bf16".parse().unwrap();
        for c in Component::ALL {
            assert_eq!(pure.dtype(c), record_with_bf16_linears.dtype(c), "{c}");
        }
        assert_eq!(pure.update_rounding(), UpdateRounding::Nearest);
        assert_eq!(
            record_with_bf16_linears.update_rounding(),
            UpdateRounding::Nearest
        );
        let sr: PrecisionPolicy = "bf16-sr,embedding=fp32".parse().unwrap();
        assert_eq!(sr.update_rounding(), UpdateRounding::Stochastic);
        assert_eq!((sr.embedding(), sr.linear()), (F32, BF16));
        assert_eq!(sr.to_string(), "bf16-sr,embedding=fp32");
        let kahan: PrecisionPolicy = "bf16-kahan".parse().unwrap();
        assert_eq!(kahan.update_rounding(), UpdateRounding::Kahan);
        assert_eq!(
            PrecisionPolicy::bf16().update_rounding(),
            UpdateRounding::Nearest
        );
    }

    #[test]
    fn parses_presets_and_overrides() {
        assert_eq!(
            "bf16".parse::<PrecisionPolicy>().unwrap(),
            PrecisionPolicy::bf16()
        );
        let p: PrecisionPolicy = "bf16, embedding=fp32".parse().unwrap();
        assert_eq!(p.embedding(), F32);
        assert_eq!(p.activation(), BF16);
        assert_eq!(p.to_string(), "bf16,embedding=fp32");
        assert_eq!(p.to_string().parse::<PrecisionPolicy>().unwrap(), p);
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = "bf17".parse::<PrecisionPolicy>().unwrap_err().to_string();
        assert!(
            err.contains("bf17") && err.contains("fp32, autocast, bf16"),
            "{err}"
        );
        let err = "bf16,wte=fp32"
            .parse::<PrecisionPolicy>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("wte") && err.contains("embedding"), "{err}");
        let err = "bf16,embedding=fp8"
            .parse::<PrecisionPolicy>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("fp8"), "{err}");
        let err = "bf16,embedding"
            .parse::<PrecisionPolicy>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("component=dtype"), "{err}");
    }
}
