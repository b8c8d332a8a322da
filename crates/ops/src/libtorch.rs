//! The libtorch implementation: on the CPU, the optimizer's kernels — stochastic rounding, the
//! fused Adam step, Kahan addition — run on libtorch's own buffers, with no copy to the host
//! and back; every other op stays libtorch's (the extension's default bodies). On a GPU they
//! answer `None` and the callers compose them from Burn's ops.

// burn-tch is deprecated upstream; this module exists to serve it.
#![allow(deprecated)]

use brainfloat_kernels::{AdamStep, Float, bf16};
use burn::backend::libtorch::{LibTorch, TchTensor};
use tch::{Device, Kind};

use crate::extension::KernelBackend;

impl KernelBackend for LibTorch {
    fn round_stochastic(values: TchTensor, key: u64) -> Option<TchTensor> {
        let values = on_cpu(&values, Kind::Float)?;
        let rounded = tch::Tensor::empty(values.size(), (Kind::BFloat16, Device::Cpu));
        // SAFETY: `values` is a contiguous CPU f32 tensor and `rounded` a new contiguous CPU
        // bf16 one of the same size, which nothing else can see yet.
        unsafe {
            brainfloat_kernels::round_stochastic_into(
                elements::<f32>(&values),
                elements_mut::<bf16>(&rounded),
                key,
            )
        };
        Some(TchTensor::new(rounded))
    }

    fn stochastic_axpby(y: TchTensor, x: TchTensor, a: f32, b: f32, key: u64) -> Option<TchTensor> {
        let x_kind = x.tensor.kind();
        if !matches!(x_kind, Kind::BFloat16 | Kind::Float) {
            return None;
        }
        let x = on_cpu(&x, x_kind)?;
        let y = owned(y, Kind::BFloat16)?;
        // SAFETY: `y` is this call's own contiguous CPU bf16 buffer (`owned`), `x` a distinct
        // contiguous CPU tensor of the kind it is read as, both of one size.
        unsafe {
            let target = elements_mut::<bf16>(&y);
            match x_kind {
                Kind::BFloat16 => {
                    brainfloat_kernels::stochastic_axpby(target, elements::<bf16>(&x), a, b, key)
                }
                _ => brainfloat_kernels::stochastic_axpby(target, elements::<f32>(&x), a, b, key),
            }
        }
        Some(TchTensor::new(y))
    }

    fn kahan_add(
        weight: TchTensor,
        compensation: TchTensor,
        delta: TchTensor,
    ) -> Option<(TchTensor, TchTensor)> {
        let delta = on_cpu(&delta, Kind::Float)?;
        let weight = owned(weight, Kind::BFloat16)?;
        let compensation = owned(compensation, Kind::BFloat16)?;
        // SAFETY: weight and compensation are this call's own contiguous CPU bf16 buffers,
        // delta a contiguous CPU f32 tensor, all of one size.
        unsafe {
            brainfloat_kernels::kahan_add(
                elements_mut::<bf16>(&weight),
                elements_mut::<bf16>(&compensation),
                elements::<f32>(&delta),
            )
        };
        Some((TchTensor::new(weight), TchTensor::new(compensation)))
    }

    fn adam_step(
        param: TchTensor,
        grad: TchTensor,
        moment_1: TchTensor,
        moment_2: TchTensor,
        step: AdamStep,
    ) -> Option<(TchTensor, TchTensor, TchTensor, TchTensor)> {
        let kind = param.tensor.kind();
        let grad = on_cpu(&grad, kind)?;
        let [param, moment_1, moment_2] = [
            owned(param, kind)?,
            owned(moment_1, kind)?,
            owned(moment_2, kind)?,
        ];
        /// The update in the buffers' element type.
        ///
        /// # Safety
        /// As for [`elements_mut`]: each tensor contiguous on the CPU, of `T`s, of one size,
        /// the three updated ones this call's own.
        unsafe fn run<T: Float>(
            [param, grad, moment_1, moment_2]: [&tch::Tensor; 4],
            step: &AdamStep,
        ) -> f64 {
            // SAFETY: the caller's guarantee.
            unsafe {
                brainfloat_kernels::adam_update(
                    elements_mut::<T>(param),
                    elements::<T>(grad),
                    elements_mut::<T>(moment_1),
                    elements_mut::<T>(moment_2),
                    step,
                )
            }
        }
        let tensors = [&param, &grad, &moment_1, &moment_2];
        // SAFETY: `owned` and `on_cpu` made each contiguous on the CPU with the kind `T` is.
        let squares = unsafe {
            match kind {
                Kind::BFloat16 => run::<bf16>(tensors, &step),
                Kind::Float => run::<f32>(tensors, &step),
                _ => return None,
            }
        };
        let squares = tch::Tensor::from_slice(&[squares as f32]);
        Some((
            TchTensor::new(param),
            TchTensor::new(moment_1),
            TchTensor::new(moment_2),
            TchTensor::new(squares),
        ))
    }
}

/// `tensor` as a contiguous CPU tensor of `kind` (itself, or a contiguous copy when strided);
/// `None` on another device or of another kind.
fn on_cpu(tensor: &TchTensor, kind: Kind) -> Option<tch::Tensor> {
    let t = &tensor.tensor;
    (t.device() == Device::Cpu && t.kind() == kind).then(|| t.contiguous())
}

/// A contiguous CPU buffer of `tensor`'s values of `kind` that this call alone holds, to be
/// updated in place: the tensor's own when this handle is its only owner (Burn's `can_mut`:
/// the optimizer hands its state over), a copy otherwise. `None` on another device or kind.
fn owned(tensor: TchTensor, kind: Kind) -> Option<tch::Tensor> {
    if tensor.tensor.device() != Device::Cpu || tensor.tensor.kind() != kind {
        return None;
    }
    if tensor.can_mut() && tensor.tensor.is_contiguous() {
        return Some(tensor.tensor);
    }
    let mut copy = tch::Tensor::empty(tensor.tensor.size(), (kind, Device::Cpu));
    copy.copy_(&tensor.tensor);
    Some(copy)
}

/// The elements of `tensor`.
///
/// # Safety
/// `tensor` is contiguous, on the CPU, of element type `T`, and no mutable view of its
/// buffer is alive.
unsafe fn elements<T>(tensor: &tch::Tensor) -> &[T] {
    let len = tensor.numel();
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's guarantee; the pointer is non-null for a non-empty tensor.
    unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const T, len) }
}

/// The elements of `tensor`, to write.
///
/// # Safety
/// As for [`elements`], and no other view of its buffer is alive while this one is.
#[allow(clippy::mut_from_ref)]
unsafe fn elements_mut<T>(tensor: &tch::Tensor) -> &mut [T] {
    let len = tensor.numel();
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's guarantee; the pointer is non-null for a non-empty tensor.
    unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut T, len) }
}
