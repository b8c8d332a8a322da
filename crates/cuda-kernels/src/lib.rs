//! brainfloat's device-side kernels: stochastic rounding, stochastic `a·y + b·x` and Kahan
//! addition in CUDA C (`csrc/rounding.cu`), compiled at run time by NVRTC for the GPU at hand
//! and launched on another library's buffers (libtorch's, on its default stream) — no CUDA
//! toolkit at build time, nothing downloaded.
//!
//! Three ways to check a kernel that may never meet a GPU:
//! - **one arithmetic** ([`source`]): every kernel computes each element by a function of
//!   `csrc/rounding.cuh`, which [`host_twin`] compiles for the CPU, so the tests hold it bit for
//!   bit to brainfloat-kernels' Rust on any machine;
//! - **a compile gate** ([`compile`]): NVRTC (PyPI's `nvidia-cuda-nvrtc-cu12`, no GPU needed)
//!   compiles every kernel for `sm_80` and `sm_90`, and ptxas's report shows no spills;
//! - **a self-test** on the device, before a kernel's first use (`brainfloat-ops`' libtorch
//!   route): a mismatch against the composed op is logged once and the composed op runs.
//!
//! ```
//! use brainfloat_cuda_kernels::{Variant, host_twin};
//!
//! let mut out = [0u16; 3];
//! host_twin::round_stochastic(&[1.0, -2.5, 0.0], &mut out, 7, Variant::Correct);
//! assert_eq!(out, [0x3F80, 0xC020, 0x0000]);
//! ```

mod compile;
mod device;
pub mod host_twin;

pub use compile::{Arch, Compiled, KernelUsage, compile, nvrtc_available, source};
pub use device::{DeviceKernels, LaunchError};

/// The kernels, by their names in `csrc/rounding.cu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `out[i] = SR(values[i])`: fp32 in, bf16 out.
    RoundStochastic,
    /// `y[i] = SR(a·y[i] + b·x[i])`, `y` bf16, `x` fp32.
    StochasticAxpbyF32,
    /// `y[i] = SR(a·y[i] + b·x[i])`, `y` and `x` bf16.
    StochasticAxpbyBf16,
    /// Kahan-compensated `weight += delta`: bf16 weight and compensation, fp32 delta.
    KahanAdd,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 4] = [
        Kernel::RoundStochastic,
        Kernel::StochasticAxpbyF32,
        Kernel::StochasticAxpbyBf16,
        Kernel::KahanAdd,
    ];

    /// Its entry point's name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::RoundStochastic => "bf_round_stochastic_kernel",
            Kernel::StochasticAxpbyF32 => "bf_stochastic_axpby_f32_kernel",
            Kernel::StochasticAxpbyBf16 => "bf_stochastic_axpby_bf16_kernel",
            Kernel::KahanAdd => "bf_kahan_add_kernel",
        }
    }
}

/// The environment variable that, in a build with the `testing` feature, makes every kernel
/// (and its host twin) the deliberately wrong variant: `1`.
pub const WRONG_VAR: &str = "BRAINFLOAT_WRONG_KERNELS";

/// Which source the kernels are built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// As written.
    Correct,
    /// With `BF_DELIBERATELY_WRONG`: the random bits and Kahan's delta flipped, so that every
    /// kernel disagrees with the composed op (the self-test's fallback is tested with it).
    #[cfg(feature = "testing")]
    DeliberatelyWrong,
}

impl Variant {
    /// The variant this process runs: [`Variant::Correct`], unless a `testing` build has
    /// [`WRONG_VAR`]` = 1`.
    pub fn active() -> Self {
        #[cfg(feature = "testing")]
        if std::env::var(WRONG_VAR).is_ok_and(|v| v == "1") {
            return Variant::DeliberatelyWrong;
        }
        Variant::Correct
    }
}
