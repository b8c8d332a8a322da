//! The kernels on a GPU: compiled by NVRTC for its architecture and launched through the driver
//! API on raw device pointers (another library's buffers) on the context's default stream,
//! which is libtorch's current stream unless a program sets another.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use crate::{Arch, Kernel, Variant, compile};

/// Why the kernels could not be loaded or launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// NVRTC did not compile them.
    #[error("compiling brainfloat's CUDA kernels: {0}")]
    Compile(String),
    /// The driver refused (no driver library, no such device, a failed launch).
    #[error("CUDA driver: {0}")]
    Driver(String),
}

/// Threads per block.
const BLOCK: u32 = 256;
/// At most this many blocks: each thread strides over the rest.
const MAX_BLOCKS: u64 = 1 << 16;

/// The kernels loaded on one GPU.
pub struct DeviceKernels {
    stream: Arc<CudaStream>,
    functions: Vec<(Kernel, CudaFunction)>,
}

/// A driver error as text.
fn driver(err: impl std::fmt::Debug) -> LaunchError {
    LaunchError::Driver(format!("{err:?}"))
}

impl DeviceKernels {
    /// Compiles `variant` for GPU `ordinal`'s architecture and loads it in the device's primary
    /// context (the one libtorch's runtime uses).
    ///
    /// # Errors
    /// When the driver or NVRTC cannot be loaded, or the kernels do not compile or load.
    pub fn load(ordinal: usize, variant: Variant) -> Result<Self, LaunchError> {
        let context = CudaContext::new(ordinal).map_err(driver)?;
        let (major, minor) = context.compute_capability().map_err(driver)?;
        let arch = Arch {
            major: major as u32,
            minor: minor as u32,
        };
        let compiled = compile(variant, arch).map_err(LaunchError::Compile)?;
        let module = context
            .load_module(Ptx::from_binary(compiled.cubin))
            .map_err(driver)?;
        let functions = Kernel::ALL
            .iter()
            .map(|kernel| {
                Ok((
                    *kernel,
                    module.load_function(kernel.name()).map_err(driver)?,
                ))
            })
            .collect::<Result<_, LaunchError>>()?;
        Ok(Self {
            stream: context.default_stream(),
            functions,
        })
    }

    fn function(&self, kernel: Kernel) -> &CudaFunction {
        &self
            .functions
            .iter()
            .find(|(k, _)| *k == kernel)
            .expect("every kernel is loaded")
            .1
    }

    /// The launch of `n` elements: one thread each, up to [`MAX_BLOCKS`] blocks.
    fn config(n: u64) -> LaunchConfig {
        let blocks = n.div_ceil(BLOCK as u64).clamp(1, MAX_BLOCKS) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `out[i] = SR(values[i])`, `n` elements.
    ///
    /// # Safety
    /// `values` is a device pointer to `n` fp32 values and `out` to `n` bf16 ones, both on this
    /// GPU, alive until the stream has run the kernel, `out` written by nothing else meanwhile.
    pub unsafe fn round_stochastic(
        &self,
        values: u64,
        out: u64,
        n: u64,
        key: u64,
    ) -> Result<(), LaunchError> {
        let function = self.function(Kernel::RoundStochastic);
        let mut launch = self.stream.launch_builder(function);
        launch.arg(&values).arg(&out).arg(&n).arg(&key);
        // SAFETY: the arguments match the kernel's signature; the caller vouches for the buffers.
        unsafe { launch.launch(Self::config(n)) }.map_err(driver)?;
        Ok(())
    }

    /// `y[i] = SR(a·y[i] + b·x[i])`, `n` elements, `x` fp32 (`x_bf16 = false`) or bf16.
    ///
    /// # Safety
    /// `y` is a device pointer to `n` bf16 values and `x` to `n` of its type, both on this GPU,
    /// alive until the stream has run the kernel, `y` written by nothing else meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn stochastic_axpby(
        &self,
        y: u64,
        x: u64,
        x_bf16: bool,
        n: u64,
        a: f32,
        b: f32,
        key: u64,
    ) -> Result<(), LaunchError> {
        let kernel = match x_bf16 {
            true => Kernel::StochasticAxpbyBf16,
            false => Kernel::StochasticAxpbyF32,
        };
        let mut launch = self.stream.launch_builder(self.function(kernel));
        launch.arg(&y).arg(&x).arg(&n).arg(&a).arg(&b).arg(&key);
        // SAFETY: the arguments match the kernel's signature; the caller vouches for the buffers.
        unsafe { launch.launch(Self::config(n)) }.map_err(driver)?;
        Ok(())
    }

    /// Kahan-compensated `weight += delta`, `n` elements.
    ///
    /// # Safety
    /// `weight` and `compensation` are device pointers to `n` bf16 values, `delta` to `n` fp32
    /// ones, all on this GPU and alive until the stream has run the kernel, the first two
    /// written by nothing else meanwhile.
    pub unsafe fn kahan_add(
        &self,
        weight: u64,
        compensation: u64,
        delta: u64,
        n: u64,
    ) -> Result<(), LaunchError> {
        let mut launch = self.stream.launch_builder(self.function(Kernel::KahanAdd));
        launch.arg(&weight).arg(&compensation).arg(&delta).arg(&n);
        // SAFETY: the arguments match the kernel's signature; the caller vouches for the buffers.
        unsafe { launch.launch(Self::config(n)) }.map_err(driver)?;
        Ok(())
    }
}
