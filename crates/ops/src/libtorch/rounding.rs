//! The rounding ops on the device route: brainfloat's CUDA kernels (`brainfloat-cuda-kernels`)
//! on a GPU's buffers, their host twin (the same per-element C code) on the CPU when the route
//! is forced there. Before a kernel's first use on a device it checks itself against the
//! composed op on a small input, bit for bit; on a mismatch (or when the kernels cannot be
//! compiled or loaded) it says so once in the log and the composed op runs from then on. A
//! kernel that has never met a GPU can then never hand a user wrong numbers.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use brainfloat_cuda_kernels::{DeviceKernels, Kernel, Variant, host_twin};
use burn::backend::libtorch::{LibTorch, TchTensor};
use tch::{Device, Kind, Tensor};

use super::{elements, elements_mut, owned, shim};
use crate::{LibTorchRoute, composed, with_libtorch_route};

/// What runs a kernel on a device.
#[derive(Clone, Copy)]
enum Runner {
    /// The CUDA kernels, loaded on that GPU.
    Gpu(&'static DeviceKernels),
    /// The host twin, on CPU buffers.
    Host(Variant),
}

/// The runner of `device`'s kernels: `None` where they cannot be loaded (logged once).
fn runner(device: Device) -> Option<Runner> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Option<&'static DeviceKernels>>>> = OnceLock::new();
    match device {
        Device::Cpu => Some(Runner::Host(Variant::active())),
        Device::Cuda(ordinal) => {
            let mut gpus = GPUS
                .get_or_init(Default::default)
                .lock()
                .expect("no panic inside");
            let loaded = gpus.entry(ordinal).or_insert_with(|| {
                match DeviceKernels::load(ordinal, Variant::active()) {
                    Ok(kernels) => Some(&*Box::leak(Box::new(kernels))),
                    Err(err) => {
                        tracing::warn!(
                            gpu = ordinal,
                            "brainfloat's rounding kernels are not available ({err}): the \
                             composed ops run, through the host"
                        );
                        None
                    }
                }
            });
            loaded.map(Runner::Gpu)
        }
        _ => None,
    }
}

/// Each (kernel, device)'s self-test result, once run.
fn self_tests() -> &'static Mutex<HashMap<(Kernel, Device), bool>> {
    static PASSED: OnceLock<Mutex<HashMap<(Kernel, Device), bool>>> = OnceLock::new();
    PASSED.get_or_init(Default::default)
}

/// The outcome of one kernel's self-test on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSelfTest {
    /// The kernel's entry point.
    pub kernel: &'static str,
    /// The device, as libtorch names it (`Cpu` for the host twin, `Cuda(0)`).
    pub device: String,
    /// Whether it agreed with the composed op bit for bit (else the composed op runs).
    pub passed: bool,
}

/// The self-tests this process has run so far (each kernel's before its first use on a device
/// of the device route), in a stable order.
pub fn kernel_self_tests() -> Vec<KernelSelfTest> {
    let mut results: Vec<KernelSelfTest> = self_tests()
        .lock()
        .expect("no panic inside")
        .iter()
        .map(|((kernel, device), passed)| KernelSelfTest {
            kernel: kernel.name(),
            device: format!("{device:?}"),
            passed: *passed,
        })
        .collect();
    results.sort_by(|a, b| (&a.device, a.kernel).cmp(&(&b.device, b.kernel)));
    results
}

/// The runner of `kernel` on `device` when it has passed its self-test there (run once per
/// device and kernel), `None` otherwise.
fn verified(kernel: Kernel, device: Device) -> Option<Runner> {
    let runner = runner(device)?;
    let passed = *self_tests()
        .lock()
        .expect("no panic inside")
        .entry((kernel, device))
        .or_insert_with(|| match self_test(kernel, runner, device) {
            Ok(()) => true,
            Err(mismatch) => {
                tracing::warn!(
                    kernel = kernel.name(),
                    ?device,
                    "brainfloat's kernel failed its self-test against the composed op \
                     ({mismatch}): the composed op runs instead"
                );
                false
            }
        });
    passed.then_some(runner)
}

/// `kernel` through `runner` and the composed op on the same small input on `device`, bit for
/// bit: values across bf16's range, subnormals, infinities and a NaN, at an odd length.
fn self_test(kernel: Kernel, runner: Runner, device: Device) -> Result<(), String> {
    let n = 4099i64;
    let values: Vec<f32> = (0..n)
        .map(|i| match i {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 1e-40,
            _ => ((i * 7919 % 2003) as f32 / 1001.0 - 1.0) * 2f32.powi((i % 41 - 20) as i32),
        })
        .collect();
    let fp32 = || Tensor::from_slice(&values).to_device(device);
    let bf16 = |shift: i64| fp32().roll([shift], [0]).to_kind(Kind::BFloat16);
    let (key, a, b) = (0x5EED_F7E5_7000, 0.9f32, -3.0f32);
    let composed_route =
        |run: &dyn Fn() -> Vec<Tensor>| with_libtorch_route(LibTorchRoute::Composed, run);
    let (ours, reference): (Vec<Tensor>, Vec<Tensor>) = match kernel {
        Kernel::RoundStochastic => (
            vec![round_stochastic_with(runner, &fp32(), key)?],
            composed_route(&|| {
                vec![composed::round_stochastic::<LibTorch>(TchTensor::new(fp32()), key).tensor]
            }),
        ),
        Kernel::StochasticAxpbyF32 | Kernel::StochasticAxpbyBf16 => {
            let x = || match kernel {
                Kernel::StochasticAxpbyF32 => fp32().roll([7], [0]),
                _ => bf16(7),
            };
            let y = bf16(0);
            stochastic_axpby_with(runner, &y, &x(), a, b, key)?;
            let reference = composed_route(&|| {
                let (y, x) = (TchTensor::new(bf16(0)), TchTensor::new(x()));
                vec![composed::stochastic_axpby::<LibTorch>(y, x, a, b, key).tensor]
            });
            (vec![y], reference)
        }
        Kernel::KahanAdd => {
            let compensation = || bf16(13).divide_scalar(512.0);
            let delta = || fp32().roll([5], [0]).divide_scalar(64.0);
            let (weight, ours_compensation) = (bf16(0), compensation());
            kahan_add_with(runner, &weight, &ours_compensation, &delta())?;
            let reference = composed_route(&|| {
                let (w, c) = composed::kahan_add::<LibTorch>(
                    TchTensor::new(bf16(0)),
                    TchTensor::new(compensation()),
                    TchTensor::new(delta()),
                );
                vec![w.tensor, c.tensor]
            });
            (vec![weight, ours_compensation], reference)
        }
    };
    for (ours, reference) in ours.iter().zip(&reference) {
        // Bit for bit, but a NaN is a NaN: libtorch's cast and the kernels' keep different
        // payloads.
        let (ours, reference) = (
            ours.to_device(Device::Cpu),
            reference.to_device(Device::Cpu),
        );
        let bits = |t: &Tensor| t.view_dtype(Kind::Int16);
        let same = bits(&ours)
            .eq_tensor(&bits(&reference))
            .logical_or(&ours.isnan().logical_and(&reference.isnan()));
        let differ = n - same.sum(Kind::Int64).int64_value(&[]);
        if differ > 0 {
            return Err(format!("{differ} of {n} elements differ"));
        }
    }
    Ok(())
}

/// `values` rounded to bf16 stochastically by the kernel, or `values` back where it does not
/// run (unavailable, or failed its self-test on this device).
pub(super) fn round_stochastic(values: TchTensor, key: u64) -> Result<TchTensor, TchTensor> {
    let Some(runner) = verified(Kernel::RoundStochastic, values.tensor.device()) else {
        return Err(values);
    };
    let values = values.tensor.to_kind(Kind::Float).contiguous();
    let out = round_stochastic_with(runner, &values, key).unwrap_or_else(|err| panic!("{err}"));
    shim::ledger_record(c"brainfloat::round_stochastic", &[&values], &[&out]);
    Ok(TchTensor::new(out))
}

/// `SR(a·y + b·x)` by the kernel (`y` bf16, `x` bf16 or fp32), in `y`'s buffer when this call
/// holds it; the inputs back where it does not run.
pub(super) fn stochastic_axpby(
    y: TchTensor,
    x: TchTensor,
    a: f32,
    b: f32,
    key: u64,
) -> Result<TchTensor, (TchTensor, TchTensor)> {
    let kind = x.tensor.kind();
    let kernel = match kind {
        Kind::BFloat16 => Kernel::StochasticAxpbyBf16,
        _ => Kernel::StochasticAxpbyF32,
    };
    let runs = y.tensor.kind() == Kind::BFloat16 && matches!(kind, Kind::BFloat16 | Kind::Float);
    let Some(runner) = verified(kernel, y.tensor.device()).filter(|_| runs) else {
        return Err((y, x));
    };
    let x = x.tensor.contiguous();
    let y = owned(y);
    stochastic_axpby_with(runner, &y, &x, a, b, key).unwrap_or_else(|err| panic!("{err}"));
    shim::ledger_record(c"brainfloat::stochastic_axpby", &[&y, &x], &[&y]);
    Ok(TchTensor::new(y))
}

/// Kahan-compensated `weight + delta` by the kernel (bf16, bf16, fp32), in the weight's and
/// compensation's buffers when this call holds them; the inputs back where it does not run.
#[allow(clippy::type_complexity)]
pub(super) fn kahan_add(
    weight: TchTensor,
    compensation: TchTensor,
    delta: TchTensor,
) -> Result<(TchTensor, TchTensor), [TchTensor; 3]> {
    let kinds = [&weight, &compensation, &delta].map(|t| t.tensor.kind());
    let runs = kinds == [Kind::BFloat16, Kind::BFloat16, Kind::Float];
    let Some(runner) = verified(Kernel::KahanAdd, weight.tensor.device()).filter(|_| runs) else {
        return Err([weight, compensation, delta]);
    };
    let delta = delta.tensor.contiguous();
    let (weight, compensation) = (owned(weight), owned(compensation));
    kahan_add_with(runner, &weight, &compensation, &delta).unwrap_or_else(|err| panic!("{err}"));
    shim::ledger_record(
        c"brainfloat::kahan_add",
        &[&weight, &compensation, &delta],
        &[&weight, &compensation],
    );
    Ok((TchTensor::new(weight), TchTensor::new(compensation)))
}

/// A launch failure on the GPU, as text.
fn launched(result: Result<(), brainfloat_cuda_kernels::LaunchError>) -> Result<(), String> {
    result.map_err(|err| err.to_string())
}

/// `SR(values)` into a new bf16 tensor (`values` contiguous fp32).
fn round_stochastic_with(runner: Runner, values: &Tensor, key: u64) -> Result<Tensor, String> {
    let out = Tensor::empty(values.size(), (Kind::BFloat16, values.device()));
    let n = values.numel();
    match runner {
        // SAFETY: both are contiguous tensors of `n` elements of the kernel's types on this GPU,
        // `out` new; libtorch's work on them is on the same (default) stream.
        Runner::Gpu(kernels) => launched(unsafe {
            kernels.round_stochastic(pointer(values), pointer(&out), n as u64, key)
        })?,
        // SAFETY: contiguous CPU tensors of these types; `out` is new and seen by nothing else.
        Runner::Host(variant) => unsafe {
            host_twin::round_stochastic(
                elements::<f32>(values),
                elements_mut::<u16>(&out),
                key,
                variant,
            )
        },
    }
    Ok(out)
}

/// `y ← SR(a·y + b·x)` in place (`y` contiguous bf16 that this call alone writes, `x`
/// contiguous fp32 or bf16 of its size).
fn stochastic_axpby_with(
    runner: Runner,
    y: &Tensor,
    x: &Tensor,
    a: f32,
    b: f32,
    key: u64,
) -> Result<(), String> {
    let (n, x_bf16) = (y.numel(), x.kind() == Kind::BFloat16);
    match runner {
        // SAFETY: as stated above, on this GPU and its default stream.
        Runner::Gpu(kernels) => launched(unsafe {
            kernels.stochastic_axpby(pointer(y), pointer(x), x_bf16, n as u64, a, b, key)
        }),
        Runner::Host(variant) => {
            // SAFETY: as stated above, on the CPU; `y` and `x` are distinct buffers.
            unsafe {
                let target = elements_mut::<u16>(y);
                match x_bf16 {
                    true => host_twin::stochastic_axpby_bf16(
                        target,
                        elements::<u16>(x),
                        a,
                        b,
                        key,
                        variant,
                    ),
                    false => host_twin::stochastic_axpby_f32(
                        target,
                        elements::<f32>(x),
                        a,
                        b,
                        key,
                        variant,
                    ),
                }
            }
            Ok(())
        }
    }
}

/// Kahan `weight += delta` in place (`weight` and `compensation` contiguous bf16 that this call
/// alone writes, `delta` contiguous fp32 of their size).
fn kahan_add_with(
    runner: Runner,
    weight: &Tensor,
    compensation: &Tensor,
    delta: &Tensor,
) -> Result<(), String> {
    let n = weight.numel();
    match runner {
        // SAFETY: as stated above, on this GPU and its default stream.
        Runner::Gpu(kernels) => launched(unsafe {
            kernels.kahan_add(
                pointer(weight),
                pointer(compensation),
                pointer(delta),
                n as u64,
            )
        }),
        Runner::Host(variant) => {
            // SAFETY: as stated above, on the CPU; the three are distinct buffers.
            unsafe {
                host_twin::kahan_add(
                    elements_mut::<u16>(weight),
                    elements_mut::<u16>(compensation),
                    elements::<f32>(delta),
                    variant,
                )
            };
            Ok(())
        }
    }
}

/// A tensor's device address, as a kernel argument.
fn pointer(tensor: &Tensor) -> u64 {
    tensor.data_ptr() as u64
}
