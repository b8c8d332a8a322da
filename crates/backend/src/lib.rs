//! Which Burn backend runs brainfloat's tensors.
//!
//! Everything that differs between backends lives here, so that adding, dropping or replacing
//! one (burn-tch is deprecated upstream) touches this crate and the Cargo features that forward
//! to it, nothing else: the name a user types, the [`Device`] it builds, the Cargo feature it
//! needs, how peak memory can be measured on it, and whether it enforces Burn's no-promotion
//! rule for mixed dtypes. The model, trainer and benchmark only ever see a [`Device`].
//!
//! | name | backend | feature |
//! |---|---|---|
//! | `flex` | Burn's own CPU backend (the default), with brainfloat-ops' native bf16 kernels | none |
//! | `tch` | libtorch 2.9 on the CPU (oneDNN: native AVX512-BF16 matmuls) | `tch` |
//! | `tch-cuda[:N]` | libtorch on CUDA GPU N (default 0) | `tch` |
//! | `cuda[:N]` | Burn's CUDA backend (CubeCL) on GPU N | `cuda` |
//!
//! ```
//! use brainfloat_backend::{Backend, MemoryMeasure};
//!
//! let backend: Backend = "flex".parse().unwrap();
//! let device = backend.device().unwrap();
//! assert!(device.supports_dtype(burn::tensor::DType::BF16));
//! assert_eq!(backend.memory_measure(), MemoryMeasure::Heap);
//! assert_eq!("tch-cuda:1".parse::<Backend>().unwrap(), Backend::TchCuda(1));
//! ```

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// The environment variable that picks the backend of the tests (and the CLI's default).
pub const BACKEND_VAR: &str = "BRAINFLOAT_BACKEND";

/// The backends brainfloat can run on, by the name users type.
pub const NAMES: &str = "flex, tch, tch-cuda[:N], cuda[:N]";

/// A backend and, for GPU backends, the device index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Burn's own CPU backend.
    #[default]
    Flex,
    /// libtorch on the CPU.
    Tch,
    /// libtorch on CUDA GPU `index`.
    TchCuda(usize),
    /// Burn's CUDA backend (CubeCL) on GPU `index`.
    Cuda(usize),
}

/// How a backend's peak memory can be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMeasure {
    /// Tensors are Rust allocations: the counting global allocator sees every byte.
    Heap,
    /// Tensors are allocated by a C++ library behind Rust's back (libtorch's CPU allocator):
    /// only the process's peak resident set sees them.
    ResidentSet,
    /// Tensors live in a device memory pool that Burn reports (`Device::memory_pool_usage`).
    DevicePool,
    /// Tensors live on a GPU whose allocator Burn cannot query (libtorch's CUDA caching
    /// allocator: tch exposes no statistics): the device memory the driver says this process
    /// holds ([`process_gpu_memory`]), which that allocator grows and never shrinks.
    ProcessGpuMemory,
}

impl MemoryMeasure {
    /// What the measure counts, for reports.
    pub fn description(self) -> &'static str {
        match self {
            Self::Heap => "heap peak (counting global allocator)",
            Self::ResidentSet => {
                "growth of the peak resident set while built and warmed up (libtorch allocates \
                 behind Rust's allocator)"
            }
            Self::DevicePool => "device memory pool reserved",
            Self::ProcessGpuMemory => {
                "growth of the GPU memory this process holds (nvidia-smi) while built and warmed \
                 up; libtorch's caching allocator reuses what earlier presets freed, so run one \
                 preset per process for this figure"
            }
        }
    }
}

/// Why a backend cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// A name that is not a backend.
    #[error("unknown backend `{name}` (valid: {NAMES})")]
    Unknown {
        /// What was asked for.
        name: String,
    },
    /// A GPU backend whose device could not be used (no driver library, no GPU).
    #[error("backend `{backend}` cannot use its device: {problem}")]
    Unavailable {
        /// The backend asked for.
        backend: Backend,
        /// What its driver said.
        problem: String,
    },
    /// A backend whose Cargo feature this binary was built without.
    #[error(
        "this binary was built without the `{feature}` feature that backend `{backend}` needs; \
         run it through `cargo xtask <command> --backend {backend}`, which builds it"
    )]
    NotBuilt {
        /// The backend asked for.
        backend: Backend,
        /// The Cargo feature it needs.
        feature: &'static str,
    },
}

impl Backend {
    /// The backend named by [`BACKEND_VAR`], `flex` when it is unset.
    pub fn from_env() -> Result<Self, BackendError> {
        match std::env::var(BACKEND_VAR) {
            Ok(name) if !name.is_empty() => name.parse(),
            _ => Ok(Self::Flex),
        }
    }

    /// The Cargo feature (of `brainfloat-backend`, forwarded by the binary) this backend needs.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Flex => None,
            Self::Tch | Self::TchCuda(_) => Some("tch"),
            Self::Cuda(_) => Some("cuda"),
        }
    }

    /// How peak memory can be measured on this backend.
    pub fn memory_measure(self) -> MemoryMeasure {
        match self {
            Self::Flex => MemoryMeasure::Heap,
            Self::Tch => MemoryMeasure::ResidentSet,
            Self::TchCuda(_) => MemoryMeasure::ProcessGpuMemory,
            Self::Cuda(_) => MemoryMeasure::DevicePool,
        }
    }

    /// The device, or why this binary cannot make it.
    #[allow(unreachable_code)]
    pub fn device(self) -> Result<Device, BackendError> {
        let not_built = |feature| {
            Err(BackendError::NotBuilt {
                backend: self,
                feature,
            })
        };
        match self {
            Self::Flex => Ok(Device::flex()),
            // burn-tch is deprecated upstream; this is the one place that builds its devices.
            #[allow(deprecated)]
            Self::Tch => {
                #[cfg(feature = "tch")]
                return Ok(Device::libtorch());
                not_built("tch")
            }
            #[allow(deprecated)]
            Self::TchCuda(index) => {
                #[cfg(feature = "tch")]
                return self.probed(Device::libtorch_cuda(index));
                let _ = index;
                not_built("tch")
            }
            Self::Cuda(index) => {
                #[cfg(feature = "cuda")]
                return self.probed(Device::cuda(index));
                let _ = index;
                not_built("cuda")
            }
        }
    }

    /// `device` once a one-element tensor was made on it: a GPU backend loads its driver
    /// lazily and panics when it cannot (no libcuda, no GPU, a bad index), which is said here as
    /// an error instead of a backtrace in the middle of building the model.
    #[allow(dead_code)] // only GPU backends probe
    fn probed(self, device: Device) -> Result<Device, BackendError> {
        use std::sync::{Arc, Mutex};
        // The driver's own words come from the panic of its runner thread; the caller only
        // sees that thread's channel close. The hook keeps the first message of any thread.
        let first = Arc::new(Mutex::new(None::<String>));
        let seen = Arc::clone(&first);
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()));
            if let (Ok(mut first), Some(message)) = (seen.lock(), message) {
                first.get_or_insert(message);
            }
        }));
        let made = std::panic::catch_unwind(|| {
            burn::tensor::Tensor::<1>::from_floats([0.0], &device).into_data()
        });
        std::panic::set_hook(hook);
        match made {
            Ok(_) => Ok(device),
            Err(_) => {
                let message = first
                    .lock()
                    .ok()
                    .and_then(|first| first.clone())
                    .unwrap_or_else(|| "its driver failed".into());
                Err(BackendError::Unavailable {
                    backend: self,
                    problem: message,
                })
            }
        }
    }

    /// The index of the GPU this backend computes on; `None` for the CPU backends.
    pub fn gpu(self) -> Option<usize> {
        match self {
            Self::Flex | Self::Tch => None,
            Self::TchCuda(index) | Self::Cuda(index) => Some(index),
        }
    }

    /// The machine this backend computes on, in words, for reports: the CPU's model and cores,
    /// or the GPU's index and the host CPU.
    pub fn machine(self) -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines().find_map(|line| {
                    line.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_else(|| "CPU".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self {
            Self::Flex | Self::Tch => format!("{cpu}, {cores} cores"),
            Self::TchCuda(index) | Self::Cuda(index) => {
                format!("CUDA GPU {index} (host: {cpu}, {cores} cores)")
            }
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flex => f.write_str("flex"),
            Self::Tch => f.write_str("tch"),
            Self::TchCuda(0) => f.write_str("tch-cuda"),
            Self::TchCuda(index) => write!(f, "tch-cuda:{index}"),
            Self::Cuda(0) => f.write_str("cuda"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Backend {
    type Err = BackendError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let unknown = || BackendError::Unknown {
            name: name.to_string(),
        };
        let (kind, index) = match name.split_once(':') {
            Some((kind, index)) => (kind, Some(index.parse().map_err(|_| unknown())?)),
            None => (name, None),
        };
        match (kind, index) {
            ("flex", None) => Ok(Self::Flex),
            ("tch", None) => Ok(Self::Tch),
            ("tch-cuda", index) => Ok(Self::TchCuda(index.unwrap_or(0))),
            ("cuda", index) => Ok(Self::Cuda(index.unwrap_or(0))),
            _ => Err(unknown()),
        }
    }
}

/// Device memory this process holds on all GPUs, as the driver reports it through
/// `nvidia-smi`; `None` where there is no `nvidia-smi` or it does not list this process.
pub fn process_gpu_memory() -> Option<u64> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    parse_gpu_memory(&String::from_utf8_lossy(&output.stdout), std::process::id())
}

/// GPU `index`'s free and total memory in bytes, as its driver reports them through
/// `nvidia-smi`; `None` where there is no `nvidia-smi` or no such GPU.
pub fn gpu_free_memory(index: usize) -> Option<(u64, u64)> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.free,memory.total",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_free_memory(&String::from_utf8_lossy(&output.stdout))
}

/// `free, total` MiB of `nvidia-smi`'s one-GPU query, in bytes.
fn parse_free_memory(csv: &str) -> Option<(u64, u64)> {
    let (free, total) = csv.lines().next()?.split_once(',')?;
    let mib = |text: &str| text.trim().parse::<u64>().ok().map(|mib| mib << 20);
    Some((mib(free)?, mib(total)?))
}

/// This process's MiB in `nvidia-smi`'s `pid, used_memory` lines, in bytes.
fn parse_gpu_memory(csv: &str, pid: u32) -> Option<u64> {
    let mib: Vec<u64> = csv
        .lines()
        .filter_map(|line| {
            let (line_pid, used) = line.split_once(',')?;
            (line_pid.trim().parse::<u32>().ok()? == pid).then(|| used.trim().parse().ok())?
        })
        .collect();
    (!mib.is_empty()).then(|| mib.iter().sum::<u64>() << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_say_what_is_valid() {
        for backend in [
            Backend::Flex,
            Backend::Tch,
            Backend::TchCuda(0),
            Backend::TchCuda(3),
            Backend::Cuda(0),
            Backend::Cuda(1),
        ] {
            assert_eq!(backend.to_string().parse::<Backend>(), Ok(backend));
        }
        assert_eq!("cuda:2".parse::<Backend>(), Ok(Backend::Cuda(2)));
        for bad in ["", "torch", "tch:1", "cuda:x", "flex:0"] {
            let err = bad.parse::<Backend>().unwrap_err().to_string();
            assert!(err.contains(NAMES), "{bad}: {err}");
        }
    }

    #[test]
    fn features_and_memory_measures() {
        assert_eq!(Backend::Flex.feature(), None);
        assert_eq!(Backend::TchCuda(1).feature(), Some("tch"));
        assert_eq!(Backend::Cuda(0).feature(), Some("cuda"));
        assert_eq!(Backend::Tch.memory_measure(), MemoryMeasure::ResidentSet);
        assert_eq!(
            Backend::TchCuda(0).memory_measure(),
            MemoryMeasure::ProcessGpuMemory
        );
    }

    #[test]
    fn gpu_memory_is_this_process_lines_in_bytes() {
        let csv = "4242, 1024\n17, 99\n4242, 512\n";
        assert_eq!(parse_gpu_memory(csv, 4242), Some(1536 << 20));
        assert_eq!(parse_gpu_memory(csv, 5), None);
        assert_eq!(parse_gpu_memory("No running processes found", 5), None);
    }

    #[test]
    fn a_gpus_free_memory_is_read_in_bytes() {
        assert_eq!(
            parse_free_memory("143165, 143771\n"),
            Some((143_165 << 20, 143_771 << 20))
        );
        assert_eq!(parse_free_memory("[N/A], 80000\n"), None);
        assert_eq!(parse_free_memory(""), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_not_built_is_a_clear_error() {
        let err = Backend::Cuda(0).device().unwrap_err().to_string();
        assert!(
            err.contains("`cuda` feature") && err.contains("--backend cuda"),
            "{err}"
        );
    }
}
