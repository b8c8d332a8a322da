//! Fault injection for the fault suite, compiled in only with the `testing` feature: production
//! builds read no environment variable here and every hook is an empty inline function.
//!
//! - `INJECT_NON_FINITE`: `loss@3,grad@5` makes step 3's loss NaN and step 5's gradients NaN
//!   (1-based steps), to exercise `train.on_non_finite` through the binary.
//! - `KILL_AT`: `after-model@4` kills the process with SIGKILL at that point of the
//!   checkpoint write of step 4 ([`FaultPoint`]), to prove a checkpoint is all or nothing.

use crate::error::TrainError;

/// The environment variable of non-finite injections (read only with the `testing` feature).
#[cfg(feature = "testing")]
pub const INJECT_NON_FINITE: &str = "BRAINFLOAT_INJECT_NON_FINITE";

/// The environment variable of kill points (read only with the `testing` feature).
#[cfg(feature = "testing")]
pub const KILL_AT: &str = "BRAINFLOAT_KILL_AT";

/// Where a fault injection puts a non-finite value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonFinite {
    Loss,
    Gradient,
}

/// A point of a checkpoint write where the fault suite can kill the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The weights' file is written, the optimizer state's not yet.
    AfterModel,
    /// Both data files are written, the record not yet.
    BeforeRecord,
    /// The record is written, nothing after it yet (retention, plugins).
    AfterRecord,
}

#[cfg(feature = "testing")]
impl FaultPoint {
    /// Every point, in the order a write passes them.
    pub const ALL: [Self; 3] = [Self::AfterModel, Self::BeforeRecord, Self::AfterRecord];

    /// The point's name in [`KILL_AT`].
    pub fn name(self) -> &'static str {
        match self {
            Self::AfterModel => "after-model",
            Self::BeforeRecord => "before-record",
            Self::AfterRecord => "after-record",
        }
    }
}

/// Kills this process with SIGKILL if [`KILL_AT`] names `at` during the checkpoint of `step`.
#[cfg(feature = "testing")]
pub(crate) fn point(at: FaultPoint, step: usize) {
    if std::env::var(KILL_AT).is_ok_and(|spec| spec == format!("{}@{step}", at.name())) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Without the `testing` feature: nothing.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub(crate) fn point(_at: FaultPoint, _step: usize) {}

/// The non-finite values the fault suite puts into a run ([`INJECT_NON_FINITE`]), by 1-based
/// step: the step's loss or its gradients made NaN. Empty, and never read, without the
/// `testing` feature.
#[derive(Debug, Clone, Default)]
pub(crate) struct Injections {
    #[cfg(feature = "testing")]
    at: Vec<(NonFinite, usize)>,
}

impl Injections {
    /// The injections [`INJECT_NON_FINITE`] asks for.
    #[cfg(feature = "testing")]
    pub(crate) fn from_environment() -> Result<Self, TrainError> {
        use crate::config::ConfigError;
        let Ok(text) = std::env::var(INJECT_NON_FINITE) else {
            return Ok(Self::default());
        };
        let at = text
            .split(',')
            .filter(|item| !item.trim().is_empty())
            .map(|item| {
                let parsed = item.trim().split_once('@').and_then(|(what, step)| {
                    let what = match what {
                        "loss" => NonFinite::Loss,
                        "grad" => NonFinite::Gradient,
                        _ => return None,
                    };
                    Some((what, step.parse().ok()?))
                });
                parsed.ok_or_else(|| {
                    TrainError::Config(ConfigError {
                        key: INJECT_NON_FINITE.into(),
                        problem: format!("`{item}` is not loss@STEP or grad@STEP"),
                    })
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { at })
    }

    /// Without the `testing` feature: none.
    #[cfg(not(feature = "testing"))]
    pub(crate) fn from_environment() -> Result<Self, TrainError> {
        Ok(Self::default())
    }

    /// Whether `what` of 1-based `step` is made NaN.
    #[cfg(feature = "testing")]
    pub(crate) fn poisons(&self, what: NonFinite, step: usize) -> bool {
        self.at.contains(&(what, step))
    }

    /// Without the `testing` feature: never.
    #[cfg(not(feature = "testing"))]
    #[inline(always)]
    pub(crate) fn poisons(&self, _what: NonFinite, _step: usize) -> bool {
        false
    }
}
