//! Which implementation of the kernels runs: chosen once per process from the CPU's features and
//! [`PATH_VAR`].

use std::sync::OnceLock;

/// Forces the bf16 GEMM's path by its [name](KernelPath::name): `amx`, `amx-model`, `gemmkit`
/// or `portable` (for tests and comparisons; the CPU decides otherwise).
pub const PATH_VAR: &str = "BRAINFLOAT_KERNELS";

/// The implementations of the bf16 GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Intel AMX's tiles (`TDPBF16PS`, 16 × 32 bf16 by 32 × 16 into 16 × 16 fp32 per
    /// instruction), where the CPU has AMX-BF16 and the OS grants the tile state (`crate::amx`).
    Amx,
    /// The AMX GEMM on the software model of the tiles: any CPU, slowly; the tests run every
    /// GEMM test through it.
    AmxModel,
    /// The `gemmkit` crate's kernels, chosen for the CPU at run time: `vdpbf16ps` (bf16 pairs
    /// into fp32 accumulators) with AVX512-BF16, its widening fp32 kernels (AVX-512F, AVX2 with
    /// FMA, NEON) elsewhere. bf16 results are rounded and stored a register tile at a time.
    Gemmkit,
    /// Any CPU: both operands widened to fp32 (exactly) whole, the `gemm` crate's fp32 GEMM
    /// (flex's) into an fp32 product the output's size, rounded once to bf16 at the end. Slower
    /// and larger than [`KernelPath::Gemmkit`] on every CPU measured (docs/kernels.md); kept as
    /// an independent implementation to check it against.
    Portable,
}

impl KernelPath {
    /// The path this process runs: the one [`PATH_VAR`] names, else AMX where it runs, else
    /// [`KernelPath::Gemmkit`]. Decided on the first call; a forced path this machine cannot
    /// run, or an unknown name, is reported once and the machine's own path runs.
    pub fn active() -> Self {
        static ACTIVE: OnceLock<KernelPath> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let detected = if Self::cpu_has_amx() {
                Self::Amx
            } else {
                Self::Gemmkit
            };
            let Ok(forced) = std::env::var(PATH_VAR) else {
                return detected;
            };
            let all = [Self::Amx, Self::AmxModel, Self::Gemmkit, Self::Portable];
            match all
                .into_iter()
                .find(|p| forced.eq_ignore_ascii_case(p.name()))
            {
                Some(Self::Amx) if !Self::cpu_has_amx() => {
                    eprintln!(
                        "warning: {PATH_VAR}=amx, but this CPU or OS does not run AMX-BF16: \
                         the {} path runs",
                        detected.name()
                    );
                    detected
                }
                Some(path) => path,
                None => {
                    eprintln!(
                        "warning: {PATH_VAR}={forced} names no GEMM path (amx, amx-model, \
                         gemmkit, portable): the {} path runs",
                        detected.name()
                    );
                    detected
                }
            }
        })
    }

    /// Whether this CPU has AMX-BF16 and the OS lets this process use its tiles.
    pub fn cpu_has_amx() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            crate::amx::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Whether this CPU has AVX512-BF16 (`vdpbf16ps`): gemmkit's bf16 kernels then multiply
    /// bf16 natively, and so do libtorch's (oneDNN).
    pub fn cpu_has_avx512_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The name used in reports and by [`PATH_VAR`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::AmxModel => "amx-model",
            Self::Gemmkit => "gemmkit",
            Self::Portable => "portable",
        }
    }
}

/// Whether this CPU has the AVX-512 subsets (F, BW, DQ, VL) the kernels' `#[target_feature]`
/// loops are compiled for (16 fp32 lanes, 8 lanes of 64-bit multiplies).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
    })
}
