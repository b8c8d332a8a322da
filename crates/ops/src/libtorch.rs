//! The libtorch implementation: on the CPU, the optimizer's kernels (stochastic rounding, the
//! fused Adam step, Kahan addition), the head's fused loss and the fp32 sum of its weight's
//! gradient run on libtorch's own buffers, with no copy to the host and back; every other op
//! stays libtorch's (the extension's default bodies). On a GPU they answer `None` and the
//! callers compose them from Burn's ops.
//!
//! The fused loss matters for memory more than for time: composed from libtorch's ops, each
//! chunk of logits passes through several logits-sized fp32 temporaries (the soft-cap, the
//! shift, the exponentials, the softmax, its gradient), the largest part of the working set
//! libtorch's forward pass adds to the activations it keeps (docs/precision.md).

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

    fn accumulate_f32(sum: TchTensor, part: TchTensor) -> Option<TchTensor> {
        let part_kind = part.tensor.kind();
        if !matches!(part_kind, Kind::BFloat16 | Kind::Float)
            || sum.tensor.size() != part.tensor.size()
        {
            return None;
        }
        let part = on_cpu(&part, part_kind)?;
        let sum = owned(sum, Kind::Float)?;
        // SAFETY: `sum` is this call's own contiguous CPU f32 buffer (`owned`), `part` a
        // distinct contiguous CPU tensor of the kind it is read as, both of one size.
        unsafe {
            let target = elements_mut::<f32>(&sum);
            match part_kind {
                Kind::BFloat16 => brainfloat_kernels::accumulate(target, elements::<bf16>(&part)),
                _ => brainfloat_kernels::accumulate(target, elements::<f32>(&part)),
            }
        }
        Some(TchTensor::new(sum))
    }

    fn widen_f32(part: TchTensor) -> Option<TchTensor> {
        if part.tensor.device() != Device::Cpu {
            return None;
        }
        // An fp32 part is the sum already: `to_kind` would hand back a second handle on its
        // buffer, which the in-place accumulation must not write through.
        match part.tensor.kind() {
            Kind::Float => Some(part),
            Kind::BFloat16 => Some(TchTensor::new(part.tensor.to_kind(Kind::Float))),
            _ => None,
        }
    }

    fn softcapped_cross_entropy(
        logits: TchTensor,
        targets: TchTensor,
        cap: Option<f64>,
        mean_over: usize,
        with_grad: bool,
    ) -> Option<(TchTensor, Option<TchTensor>)> {
        let kind = logits.tensor.kind();
        if !matches!(kind, Kind::BFloat16 | Kind::Float) || logits.tensor.dim() != 2 {
            return None;
        }
        let vocab = logits.tensor.size()[1] as usize;
        let targets = on_cpu(&targets, Kind::Int64)?;
        // SAFETY: `on_cpu` made `targets` a contiguous CPU i64 tensor.
        let targets: Vec<usize> = unsafe { elements::<i64>(&targets) }
            .iter()
            .map(|t| *t as usize)
            .collect();
        /// The loss of `logits`, with `in_place` its gradient written over them.
        ///
        /// # Safety
        /// `logits` is contiguous on the CPU, of `T`s, and with `in_place` this call's own.
        unsafe fn run<T: Float>(
            logits: &tch::Tensor,
            in_place: bool,
            (vocab, targets, cap, mean_over): (usize, &[usize], Option<f32>, usize),
        ) -> f64 {
            // SAFETY: the caller's guarantee.
            unsafe {
                if in_place {
                    let values = elements_mut::<T>(logits);
                    brainfloat_kernels::softcapped_cross_entropy_in_place(
                        values, vocab, targets, cap, mean_over,
                    )
                } else {
                    let values = elements::<T>(logits);
                    brainfloat_kernels::softcapped_cross_entropy(
                        values, vocab, targets, cap, mean_over, None,
                    )
                }
            }
        }
        // The gradient is written over the logits: their own buffer when this is its only
        // handle (the head hands each chunk over), a copy otherwise.
        let logits = if with_grad {
            owned(logits, kind)?
        } else {
            on_cpu(&logits, kind)?
        };
        let problem = (vocab, &targets[..], cap.map(|c| c as f32), mean_over);
        // SAFETY: `owned` made `logits` this call's own contiguous CPU buffer of `kind`,
        // `on_cpu` a contiguous CPU tensor of it.
        let value = unsafe {
            match kind {
                Kind::BFloat16 => run::<bf16>(&logits, with_grad, problem),
                _ => run::<f32>(&logits, with_grad, problem),
            }
        };
        let loss = TchTensor::new(tch::Tensor::from_slice(&[value as f32]));
        Some((loss, with_grad.then(|| TchTensor::new(logits))))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32], kind: Kind) -> TchTensor {
        TchTensor::new(tch::Tensor::from_slice(values).to_kind(kind))
    }

    /// As on flex: a kernel writes its result into an input's own buffer when it holds the
    /// tensor's only handle, and leaves a buffer another handle shares untouched.
    #[test]
    fn kernels_update_a_buffer_they_alone_hold_in_place() {
        let values = [0.5f32, -1.0, 2.0, 0.25];
        let sum = tensor(&values, Kind::Float);
        let at = sum.tensor.data_ptr();
        let sum = LibTorch::accumulate_f32(sum, tensor(&values, Kind::BFloat16)).unwrap();
        assert_eq!(sum.tensor.data_ptr(), at, "accumulate_f32");

        let y = tensor(&values, Kind::BFloat16);
        let at = y.tensor.data_ptr();
        let y = LibTorch::stochastic_axpby(y, tensor(&values, Kind::Float), 0.5, 1.0, 7).unwrap();
        assert_eq!(y.tensor.data_ptr(), at, "stochastic_axpby");

        let logits = TchTensor::new(tch::Tensor::from_slice(&values).view([2, 2]));
        let targets = TchTensor::new(tch::Tensor::from_slice(&[1i64, 0]));
        let at = logits.tensor.data_ptr();
        let (_, grad) =
            LibTorch::softcapped_cross_entropy(logits, targets.clone(), Some(30.0), 2, true)
                .unwrap();
        assert_eq!(grad.unwrap().tensor.data_ptr(), at, "the loss's gradient");

        let logits = TchTensor::new(tch::Tensor::from_slice(&values).view([2, 2]));
        let (_, grad) =
            LibTorch::softcapped_cross_entropy(logits.clone(), targets, None, 2, true).unwrap();
        assert_ne!(grad.unwrap().tensor.data_ptr(), logits.tensor.data_ptr());
        assert_eq!(
            Vec::<f32>::try_from(logits.tensor.view([-1])).unwrap(),
            values
        );
    }
}
