//! Precision primitives for bf16 mixed-precision training on Burn.
//!
//! This crate is the part of brainfloat that decides dtypes. It gives any Burn model the
//! CastBf16 recipe:
//!
//! - [`CastedLinear`]: a linear layer with an fp32 master weight (PyTorch's `[out, in]` layout)
//!   cast to the matmul dtype at use, so gradients and optimizer state stay fp32 while the
//!   matmul runs in bf16;
//! - [`PrecisionPolicy`]: the dtype of every component (master weights, embeddings, scalars,
//!   matmul operands, activations; the loss is always fp32), from the presets `fp32`,
//!   `autocast`, `bf16`, `bf16-pure`, `bf16-sr` and `bf16-kahan` (the last three keep weights,
//!   gradients and optimizer state in bf16, their updates rounded to nearest, stochastically or
//!   with Kahan compensation), with per-component overrides;
//! - [`apply_policy`]: one call that casts every parameter to its storage dtype and hands the
//!   compute dtypes to the model, which hands them to each layer; [`PrecisionReport`] shows the bytes per dtype per component;
//! - [`lost_updates`]: which fp32 master-weight updates bf16 storage would lose;
//! - [`CastedLinear::softcapped_cross_entropy`]: the output head and the record's loss (fp32
//!   from bf16 or fp32 logits) fused, so that the logits never enter the autodiff graph.
//!
//! ```
//! use brainfloat_precision::{CastedLinearConfig, PrecisionPolicy, PrecisionReport, apply_policy};
//! use burn::tensor::{DType, Device, Tensor};
//!
//! let device = Device::flex();
//! let policy: PrecisionPolicy = "bf16".parse().unwrap();
//! policy.check_device(&device).unwrap();
//!
//! let layer = apply_policy(CastedLinearConfig::new(4, 3).init(&device), &policy, &device).unwrap();
//! let x = Tensor::<2>::ones([2, 4], (&device, DType::BF16));
//! let y = layer.forward(x);
//! assert_eq!(y.dtype(), DType::BF16); // computed in bf16 ...
//! assert_eq!(layer.weight.dtype(), DType::F32); // ... from an fp32 master weight
//! println!("{}", PrecisionReport::of(&layer));
//! ```

mod casted_linear;
mod convert;
mod error;
mod head_loss;
mod lost_update;
mod named;
mod path;
mod policy;
mod report;
mod role;

pub use casted_linear::{CastedLinear, CastedLinearConfig, WeightLayout};
pub use convert::{PrecisionAware, apply_policy, cast_params};
pub use error::PrecisionError;
pub use head_loss::{Head, LOGITS_PER_CHUNK, head_loss, rows_per_chunk, softcap};
pub use lost_update::{
    compensation_in_half_ulps, half_bf16_ulp, lost_updates, stochastic_rounded_away,
};
pub use named::{NamedTensor, named_grads, named_params};
pub use path::ParamPath;
pub use policy::{
    ACCUMULATION_DTYPE, Component, ComputeDtypes, LOSS_DTYPE, PrecisionPolicy, Preset,
    UpdateRounding, dtype_name, parse_dtype,
};
pub use report::{PrecisionReport, ReportRow, dtype_info};
pub use role::{ParamRole, ParamRoles, RoleMap};
