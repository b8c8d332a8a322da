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
            let forced = std::env::var(PATH_VAR).ok();
            Self::choose(forced.as_deref(), Self::cpu_has_amx()).unwrap_or_else(
                |(problem, path)| {
                    eprintln!("warning: {problem}: the {} path runs", path.name());
                    path
                },
            )
        })
    }

    /// The path for a [`PATH_VAR`] value (if set) on a machine that does or does not run AMX:
    /// the named path, or the machine's own where none is named; a name this machine cannot
    /// run, or an unknown one, is a problem reported beside the machine's own path.
    fn choose(forced: Option<&str>, amx: bool) -> Result<Self, (String, Self)> {
        let detected = if amx { Self::Amx } else { Self::Gemmkit };
        let Some(forced) = forced else {
            return Ok(detected);
        };
        let all = [Self::Amx, Self::AmxModel, Self::Gemmkit, Self::Portable];
        match all
            .into_iter()
            .find(|p| forced.eq_ignore_ascii_case(p.name()))
        {
            Some(Self::Amx) if !amx => Err((
                format!("{PATH_VAR}=amx, but this CPU or OS does not run AMX-BF16"),
                detected,
            )),
            Some(path) => Ok(path),
            None => Err((
                format!(
                    "{PATH_VAR}={forced} names no GEMM path (amx, amx-model, gemmkit, portable)"
                ),
                detected,
            )),
        }
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

/// `fn name(args) -> ret { body }` whose body is compiled three times — for AVX-512 (F, BW, DQ,
/// VL), for AVX2 and FMA, and portable — and run as the first the CPU supports: for loops that
/// vectorise wider with AVX-512 and whose `f32::mul_add` must be an instruction (without FMA it
/// is a call into libm).
macro_rules! fma_multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($generic:ident: $bound:path),* $(,)?>)?
        ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$($generic: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable $(<$($generic: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
                unsafe fn avx512 $(<$($generic: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    portable $(::<$($generic),*>)? ($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2_fma $(<$($generic: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    portable $(::<$($generic),*>)? ($($arg),*)
                }
                if crate::path::avx512() {
                    // SAFETY: the CPU reports every feature `avx512` is compiled for.
                    return unsafe { avx512 $(::<$($generic),*>)? ($($arg),*) };
                }
                if crate::path::avx2_fma() {
                    // SAFETY: the CPU reports every feature `avx2_fma` is compiled for.
                    return unsafe { avx2_fma $(::<$($generic),*>)? ($($arg),*) };
                }
            }
            portable $(::<$($generic),*>)? ($($arg),*)
        }
    };
}
pub(crate) use fma_multiversion;

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

/// Whether this CPU has AVX2 and FMA: the fallback of the loops that fuse multiply-adds
/// (without the instruction, `f32::mul_add` is a call into libm).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    static AVX2_FMA: OnceLock<bool> = OnceLock::new();
    *AVX2_FMA.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(test)]
mod tests {
    use super::KernelPath::{self, *};

    #[test]
    fn the_machine_decides_unless_a_path_it_can_run_is_named() {
        let choose = KernelPath::choose;
        assert_eq!(choose(None, true), Ok(Amx));
        assert_eq!(choose(None, false), Ok(Gemmkit));
        for amx in [false, true] {
            assert_eq!(choose(Some("amx-model"), amx), Ok(AmxModel));
            assert_eq!(choose(Some("Portable"), amx), Ok(Portable));
            assert_eq!(choose(Some("gemmkit"), amx), Ok(Gemmkit));
        }
        assert_eq!(choose(Some("amx"), true), Ok(Amx));
        let (problem, path) = choose(Some("amx"), false).unwrap_err();
        assert_eq!(path, Gemmkit);
        assert!(problem.contains("does not run AMX-BF16"), "{problem}");
        let (problem, path) = choose(Some("avx9"), true).unwrap_err();
        assert_eq!(path, Amx);
        assert!(
            problem.contains("BRAINFLOAT_KERNELS=avx9 names no GEMM path"),
            "{problem}"
        );
    }
}
