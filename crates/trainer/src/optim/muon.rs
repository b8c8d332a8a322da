//! Muon for the blocks' hidden matrices: momentum, Nesterov's look-ahead, then Newton–Schulz
//! orthogonalisation, scaled by `max(1, out/in)^0.5` (the record's `max(1, rows/cols)^0.5` in
//! PyTorch's `[out, in]` layout; a matrix stored `[in, out]`, as GPT-2's `Conv1D`, gets the same
//! factor).

use brainfloat_ops::{axpbys, matmul, scale, square_sums};
use brainfloat_precision::WeightLayout;
use burn::tensor::{FloatDType, Tensor};

use super::groups::RecordOptimizerConfig;
use super::write::{self, Observer, Stream, Writer, in_dtype};

/// Muon's state of one matrix: its momentum buffer, flattened, in the parameter's dtype.
#[derive(Debug, Clone)]
pub(super) struct MuonState {
    pub momentum_buffer: Tensor<1>,
}

/// Muon's hyper-parameters at one step.
pub(super) struct Muon {
    /// The momentum of this step (it rises over Muon's warmup).
    pub momentum: f64,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Dtype of the Newton–Schulz iteration.
    pub ns_dtype: FloatDType,
    /// Decoupled weight decay: `w ← w − lr·wd·w` beside the update.
    pub weight_decay: f64,
    /// How the matrix is stored: which side is its output.
    pub layout: WeightLayout,
}

impl Muon {
    /// Muon's hyper-parameters at optimizer step `step` for matrices stored in `layout` with
    /// their group's `weight_decay`: the momentum rises over the warmup as the record's,
    /// `(1−f)·start + f·end` with `f = min(step/warmup, 1)`.
    pub fn at_step(
        config: &RecordOptimizerConfig,
        step: usize,
        weight_decay: f64,
        layout: WeightLayout,
    ) -> Self {
        let f = (step as f64 / config.muon_momentum_warmup.max(1) as f64).min(1.0);
        Muon {
            momentum: (1.0 - f) * config.muon_momentum_start + f * config.muon_momentum,
            ns_steps: config.ns_steps,
            ns_dtype: config.ns_dtype,
            weight_decay,
            layout,
        }
    }

    /// One step of a group's `[rows, cols]` matrices (flattened, one shape and layout, as the
    /// record batches them) with their gradients at rate `lr`: their new weights and state, in
    /// order, written by their writers. The momentum, the look-ahead and the weights are each one
    /// multi-tensor op for the group (where the rounding allows), Newton–Schulz one batched
    /// iteration over all of them.
    #[allow(clippy::too_many_arguments)]
    pub fn update_group(
        &self,
        states: Vec<Option<MuonState>>,
        params: Vec<Tensor<1>>,
        grads: Vec<Tensor<1>>,
        [rows, cols]: [usize; 2],
        lr: f64,
        writers: &mut [Writer],
        observer: &mut Observer<'_>,
    ) -> Vec<(Tensor<1>, MuonState)> {
        let grads: Vec<Tensor<1>> = (grads.into_iter().zip(writers.iter()))
            .map(|(grad, writer)| in_dtype(grad, writer.compute()))
            .collect();
        let buffers = states
            .into_iter()
            .map(|s| s.map(|s| s.momentum_buffer))
            .collect();
        let buffers = write::states_axpy(
            writers,
            buffers,
            grads.clone(),
            self.momentum,
            Stream::MomentumBuffer,
        );
        let nesterov = axpbys(grads, buffers.clone(), 1.0, self.momentum);
        let matrices = nesterov
            .into_iter()
            .map(|g| g.reshape([rows, cols]))
            .collect();
        let ortho = newton_schulz(matrices, self.ns_steps, self.ns_dtype);
        let (outputs, inputs) = match self.layout {
            WeightLayout::OutIn => (rows, cols),
            WeightLayout::InOut => (cols, rows),
        };
        let shape_factor = (outputs as f64 / inputs as f64).max(1.0).sqrt();
        let mut directions: Vec<Tensor<1>> = (ortho.split(1, 0).into_iter())
            .map(|matrix| matrix.reshape([rows * cols]))
            .collect();
        if self.weight_decay != 0.0 {
            // Scaled by lr·shape below: lr·wd·w.
            let decay = self.weight_decay / shape_factor;
            directions = (directions.into_iter().zip(&params).zip(writers.iter()))
                .map(|((direction, param), writer)| {
                    let compute = writer.compute();
                    in_dtype(direction, compute) + scale(in_dtype(param.clone(), compute), decay)
                })
                .collect();
        }
        let params = write::weights(writers, params, directions, lr * shape_factor, observer);
        (params.into_iter().zip(buffers))
            .map(|(param, momentum_buffer)| (param, MuonState { momentum_buffer }))
            .collect()
    }
}

/// The quintic Newton–Schulz coefficients of the record.
pub const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// For each of a batch of `[rows, cols]` matrices `G` (one shape): `X = G/(‖G‖_F + 1e-7)` in
/// `dtype` (transposed when rows > cols), then `steps` times the record's `A = X·Xᵀ; B = A·X;
/// X = a·X + b·B + c·A·B`, transposed back, as one batched iteration, rounded where the
/// record's PyTorch rounds (each product, each scaled term, each sum). Returns
/// `[batch, rows, cols]` in `dtype`.
///
/// # Panics
/// When `grads` is empty.
pub fn newton_schulz(grads: Vec<Tensor<2>>, steps: usize, dtype: FloatDType) -> Tensor<3> {
    let (a, b, c) = NS_COEFFICIENTS;
    let [rows, cols] = grads.first().expect("newton_schulz: a matrix").dims();
    let batch = grads.len();
    // The Frobenius norms accumulate in fp32 (as PyTorch's bf16 `norm` does), then round.
    let flat = grads
        .iter()
        .map(|g| g.clone().reshape([rows * cols]))
        .collect();
    let norms = Tensor::cat(square_sums(flat), 0).sqrt();
    let norms = norms.cast(dtype).add_scalar(1e-7).reshape([batch, 1, 1]);
    let mut x = Tensor::stack::<3>(grads, 0).cast(dtype) / norms;
    let tall = rows > cols;
    if tall {
        x = x.transpose();
    }
    for _ in 0..steps {
        let gram = matmul(x.clone(), x.clone().transpose());
        let product = matmul(gram.clone(), x.clone());
        // `a * X + b * B + c * A @ B` in Python: ((a·X + b·B) + (c·A)·B).
        x = scale(x, a) + scale(product.clone(), b) + matmul(scale(gram, c), product);
    }
    if tall { x.transpose() } else { x }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, TensorData};

    /// Newton–Schulz in float64, on row-major `rows × cols` values, written out.
    fn reference(g: &[f64], rows: usize, cols: usize, steps: usize) -> Vec<f64> {
        let (a, b, c) = NS_COEFFICIENTS;
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt() + 1e-7;
        // Work on the wide orientation: X is r × k with r ≤ k.
        let tall = rows > cols;
        let (r, k) = if tall { (cols, rows) } else { (rows, cols) };
        let at = |i: usize, j: usize| {
            if tall {
                g[j * cols + i]
            } else {
                g[i * cols + j]
            }
        };
        let mut x: Vec<f64> = (0..r * k).map(|n| at(n / k, n % k) / norm).collect();
        let matmul = |p: &[f64], q: &[f64], n: usize, m: usize, l: usize| {
            let mut out = vec![0.0; n * l];
            for i in 0..n {
                for j in 0..l {
                    out[i * l + j] = (0..m).map(|s| p[i * m + s] * q[s * l + j]).sum();
                }
            }
            out
        };
        for _ in 0..steps {
            let xt: Vec<f64> = (0..k * r).map(|n| x[(n % r) * k + n / r]).collect();
            let gram = matmul(&x, &xt, r, k, r);
            let cubic = matmul(&gram, &x, r, r, k);
            let quintic = matmul(&gram, &cubic, r, r, k);
            x = (0..r * k)
                .map(|n| a * x[n] + b * cubic[n] + c * quintic[n])
                .collect();
        }
        if tall {
            (0..rows * cols)
                .map(|n| x[(n % cols) * k + n / cols])
                .collect()
        } else {
            x
        }
    }

    /// A batch of three matrices of each shape, each against its own reference: the batched
    /// iteration keeps the matrices apart (each its own norm) and is the map itself.
    #[test]
    fn matches_a_float64_reference_in_both_orientations() {
        let device = brainfloat_test_support::test_device();
        for (rows, cols) in [(4, 6), (6, 4), (5, 5)] {
            let g: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3 + (i as f32).sin())
                .collect();
            // The same matrix scaled (its own norm undoes the scale) and one of other values.
            let scaled = g.iter().map(|v| v / 128.0).collect();
            let reversed = g.iter().rev().map(|v| v * 3.0).collect();
            let batch = [g, scaled, reversed];
            for (dtype, tolerance) in [(FloatDType::F32, 1e-5), (FloatDType::BF16, 0.1)] {
                let grads = (batch.iter())
                    .map(|g| {
                        let data = TensorData::new(g.clone(), [rows, cols]);
                        Tensor::<2>::from_data(data, (&device, DType::F32))
                    })
                    .collect();
                let x = newton_schulz(grads, 5, dtype);
                assert_eq!(x.dtype(), DType::from(dtype));
                assert_eq!(x.dims(), [3, rows, cols]);
                let got = x
                    .cast(FloatDType::F32)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                for (g, got) in batch.iter().zip(got.chunks(rows * cols)) {
                    let want = reference(
                        &g.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                        rows,
                        cols,
                        5,
                    );
                    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (*a as f64 - b).abs() / scale)
                        .fold(0.0, f64::max);
                    let l2 =
                        |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
                    let frobenius = l2(&mut got.iter().zip(&want).map(|(a, b)| *a as f64 - b))
                        / l2(&mut want.iter().copied());
                    println!(
                        "{rows}×{cols} {dtype:?}: worst {worst:.2e}, frobenius {frobenius:.2e}"
                    );
                    // fp32 agrees element by element (measured ≤ 1.3e-6). In bf16 each of the
                    // five quintic iterations re-rounds and amplifies the previous rounding, so
                    // the result drifts 5–8 % (Frobenius) from the exact map, as PyTorch's bf16
                    // Muon does; the bf16 training curve against PyTorch
                    // (tests/golden_curve.rs) checks its effect.
                    let error = if dtype == FloatDType::F32 {
                        worst
                    } else {
                        frobenius
                    };
                    assert!(error <= tolerance, "{rows}×{cols} {dtype:?}: {error}");
                }
            }
        }
    }

    /// The batched iteration is each matrix's own iteration: a batch of three gives, bit for
    /// bit, what each gives alone, in bf16 and fp32, wide and tall.
    #[test]
    fn a_batch_is_each_matrix_alone_bit_for_bit() {
        let device = brainfloat_test_support::test_device();
        for (rows, cols) in [(64, 256), (256, 64), (64, 64)] {
            for dtype in [FloatDType::BF16, FloatDType::F32] {
                let matrices: Vec<Tensor<2>> = (0..3)
                    .map(|m| {
                        let values: Vec<f32> = (0..rows * cols)
                            .map(|i| ((i * 7919 + m * 104_729) % 1009) as f32 / 504.5 - 1.0)
                            .collect();
                        Tensor::<2>::from_data(
                            TensorData::new(values, [rows, cols]),
                            (&device, DType::F32),
                        )
                        .cast(dtype)
                    })
                    .collect();
                let batched = newton_schulz(matrices.clone(), 5, dtype);
                for (m, matrix) in matrices.into_iter().enumerate() {
                    let alone = newton_schulz(vec![matrix], 5, dtype);
                    let bits = |t: Tensor<3>| -> Vec<u32> {
                        let v: Vec<f32> = t.cast(FloatDType::F32).into_data().try_to_vec().unwrap();
                        v.iter().map(|x| x.to_bits()).collect()
                    };
                    let one = batched.clone().slice([m..m + 1, 0..rows, 0..cols]);
                    let (one, alone) = (bits(one), bits(alone));
                    let same = one.iter().zip(&alone).filter(|(a, b)| a == b).count();
                    assert_eq!(
                        same,
                        one.len(),
                        "{rows}×{cols} {dtype:?} matrix {m}: {same} of {} the same",
                        one.len()
                    );
                }
            }
        }
    }
}
