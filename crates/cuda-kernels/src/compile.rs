//! The kernels' source and their compilation by NVRTC, loaded at run time (PyPI's
//! `nvidia-cuda-nvrtc-cu12` on `LD_LIBRARY_PATH` is enough: no GPU, no toolkit).

use std::ffi::{CStr, CString, c_char};

use cudarc::nvrtc::{result, sys};

use crate::{Kernel, Variant};

/// The per-element arithmetic every kernel calls.
const ARITHMETIC: &str = include_str!("../csrc/rounding.cuh");
/// The kernels' loops.
const KERNELS: &str = include_str!("../csrc/rounding.cu");

/// The CUDA C source NVRTC compiles: the kernels with their arithmetic inlined (NVRTC sees no
/// files), and `BF_DELIBERATELY_WRONG` defined for that variant.
pub fn source(variant: Variant) -> String {
    let kernels = KERNELS.replace("#include \"rounding.cuh\"", ARITHMETIC);
    match variant {
        Variant::Correct => kernels,
        #[cfg(feature = "testing")]
        Variant::DeliberatelyWrong => format!("#define BF_DELIBERATELY_WRONG\n{kernels}"),
    }
}

/// A GPU architecture, as NVRTC names it: compute capability `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// The compute capability's major version (8 for A100, 9 for H100/H200).
    pub major: u32,
    /// Its minor version.
    pub minor: u32,
}

impl Arch {
    /// The architectures CI compiles for: `sm_80` (A100) and `sm_90` (H100, H200).
    pub const GATED: [Arch; 2] = [Arch { major: 8, minor: 0 }, Arch { major: 9, minor: 0 }];

    /// `sm_XY`.
    pub fn sm(self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }
}

/// A compiled module and what the compiler said.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The cubin for the architecture (the driver loads it as it is).
    pub cubin: Vec<u8>,
    /// NVRTC's log, with ptxas's report of each kernel's resources.
    pub log: String,
}

/// One kernel's resources, as ptxas reports them (`-v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelUsage {
    /// The kernel's entry point.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes spilled to local memory (stores).
    pub spill_stores: u32,
    /// Bytes read back from spills.
    pub spill_loads: u32,
}

impl Compiled {
    /// Each kernel's resources from the log: `None` when ptxas said nothing about a kernel.
    pub fn usage(&self, kernel: Kernel) -> Option<KernelUsage> {
        let name = kernel.name();
        let start = self.log.find(&format!("Function properties for {name}"))?;
        let report = &self.log[start..];
        let number_before = |text: &str, unit: &str| -> Option<u32> {
            let at = text.find(unit)?;
            text[..at].split_whitespace().last()?.parse().ok()
        };
        let registers_at = report.find("Used ")?;
        Some(KernelUsage {
            name: name.to_string(),
            registers: report[registers_at + 5..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()?,
            spill_stores: number_before(report, "bytes spill stores")?,
            spill_loads: number_before(report, "bytes spill loads")?,
        })
    }
}

/// Whether NVRTC's library can be loaded (it is searched for on `LD_LIBRARY_PATH`).
pub fn nvrtc_available() -> bool {
    // SAFETY: tries to open the library by its candidate names; no call into it.
    unsafe { sys::is_culib_present() }
}

/// The kernels of `variant` compiled by NVRTC into a cubin for `arch`, with ptxas's resource
/// report in the log. Multiply-adds are not fused (`--fmad=false`): the arithmetic rounds as
/// the CPU kernels do.
///
/// # Errors
/// When NVRTC cannot be loaded, or the source does not compile (its log).
pub fn compile(variant: Variant, arch: Arch) -> Result<Compiled, String> {
    if !nvrtc_available() {
        return Err(
            "NVRTC (libnvrtc.so) is not on the library path: install PyPI's \
                    nvidia-cuda-nvrtc-cu12 and add its lib folder to LD_LIBRARY_PATH"
                .into(),
        );
    }
    let source = CString::new(source(variant)).expect("the source has no NUL byte");
    let program = result::create_program(&source, Some(c"brainfloat_rounding.cu"))
        .map_err(|err| format!("NVRTC could not create the program: {err:?}"))?;
    let options = [
        format!("--gpu-architecture={}", arch.sm()),
        "--fmad=false".to_string(),
        "--ptxas-options=-v".to_string(),
    ];
    // SAFETY: `program` was just created and is destroyed below, once.
    let compiled = unsafe { result::compile_program(program, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program) }
        .map(|log| text_of(&log))
        .unwrap_or_default();
    let cubin = compiled
        .map_err(|err| {
            format!(
                "NVRTC did not compile the kernels for {}: {err:?}\n{log}",
                arch.sm()
            )
        })
        // SAFETY: as above; the program compiled.
        .and_then(|()| unsafe { cubin_of(program) });
    // SAFETY: as above.
    let _ = unsafe { result::destroy_program(program) };
    Ok(Compiled { cubin: cubin?, log })
}

/// The compiled program's cubin.
///
/// # Safety
/// `program` is a live NVRTC program that compiled for a real architecture (`sm_XY`).
unsafe fn cubin_of(program: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: the caller's guarantee; `size` is a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }
        .result()
        .map_err(|err| format!("NVRTC gave no cubin size: {err:?}"))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the `size` bytes NVRTC writes.
    unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|err| format!("NVRTC gave no cubin: {err:?}"))?;
    Ok(cubin)
}

/// NVRTC's NUL-terminated log as text.
fn text_of(log: &[c_char]) -> String {
    let bytes: Vec<u8> = log.iter().map(|c| *c as u8).collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|text| text.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
}
