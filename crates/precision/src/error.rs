//! Errors of the precision crate.

use std::fmt;

/// What went wrong when building or applying a precision policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrecisionError {
    /// A preset name that is not one of the presets.
    UnknownPreset {
        /// The name given.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// A component name that is not one of the components.
    UnknownComponent {
        /// The name given.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// A dtype name that is not understood.
    UnknownDtype {
        /// The name given.
        name: String,
    },
    /// An override not of the form `component=dtype`.
    MalformedOverride {
        /// The text given.
        text: String,
    },
    /// The device cannot compute in a dtype the policy needs.
    UnsupportedDtype {
        /// The dtype.
        dtype: &'static str,
        /// The device.
        device: String,
        /// The policy, as a string.
        policy: String,
    },
    /// Parameters whose role the model does not state, so that their dtype is unknown.
    WithoutRole {
        /// Their names, comma-separated.
        params: String,
    },
}

impl fmt::Display for PrecisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPreset { name, valid } => {
                write!(f, "unknown precision preset `{name}` (valid: {valid})")
            }
            Self::UnknownComponent { name, valid } => {
                write!(f, "unknown precision component `{name}` (valid: {valid})")
            }
            Self::UnknownDtype { name } => {
                write!(f, "unknown dtype `{name}` (valid: fp32, bf16, fp16, fp64)")
            }
            Self::MalformedOverride { text } => write!(
                f,
                "precision override `{text}` is not of the form component=dtype"
            ),
            Self::UnsupportedDtype {
                dtype,
                device,
                policy,
            } => write!(
                f,
                "precision policy `{policy}` needs {dtype}, which device {device} does not \
                 support; use the flex, tch or cuda backend, or the fp32 preset"
            ),
            Self::WithoutRole { params } => write!(
                f,
                "the model states no role for {params}: its `ParamRoles` must list every \
                 parameter (the role decides the dtype)"
            ),
        }
    }
}

impl std::error::Error for PrecisionError {}
