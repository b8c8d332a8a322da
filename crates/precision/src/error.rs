//! Errors of the precision crate.

use brainfloat_choice::UnknownChoice;

/// What went wrong when building or applying a precision policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecisionError {
    /// A preset or component name that is not one of them.
    #[error(transparent)]
    Unknown(#[from] UnknownChoice),
    /// A dtype name that is not understood.
    #[error("unknown dtype `{name}` (valid: fp32, bf16, fp16, fp64)")]
    UnknownDtype {
        /// The name given.
        name: String,
    },
    /// An override not of the form `component=dtype`.
    #[error("precision override `{text}` is not of the form component=dtype")]
    MalformedOverride {
        /// The text given.
        text: String,
    },
    /// The device cannot compute in a dtype the policy needs.
    #[error(
        "precision policy `{policy}` needs {dtype}, which device {device} does not support; use \
         the flex, tch or cuda backend, or the fp32 preset"
    )]
    UnsupportedDtype {
        /// The dtype.
        dtype: &'static str,
        /// The device.
        device: String,
        /// The policy, as a string.
        policy: String,
    },
    /// Parameters whose role the model does not state, so that their dtype is unknown.
    #[error(
        "the model states no role for {params}: its `ParamRoles` must list every parameter (the \
         role decides the dtype)"
    )]
    WithoutRole {
        /// Their names, comma-separated.
        params: String,
    },
}
