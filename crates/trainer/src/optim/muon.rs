//! Muon for the blocks' hidden matrices: momentum, Nesterov's look-ahead, then Newton–Schulz
//! orthogonalisation, scaled by `max(1, out/in)^0.5` (the record's `max(1, rows/cols)^0.5` in
//! PyTorch's `[out, in]` layout; a matrix stored `[in, out]`, as GPT-2's `Conv1D`, gets the same
//! factor).

use brainfloat_ops::{axpby, matmul, square_sum};
use brainfloat_precision::WeightLayout;
use burn::tensor::{FloatDType, Tensor};

use super::write::{Stream, Writer, in_dtype};

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
    /// One step of the `[rows, cols]` matrix `param` (flattened) with gradient `grad` at rate
    /// `lr`: its new weights and state, written by `writer`.
    pub fn update(
        &self,
        state: Option<MuonState>,
        param: Tensor<1>,
        grad: Tensor<1>,
        [rows, cols]: [usize; 2],
        lr: f64,
        writer: &mut Writer,
    ) -> (Tensor<1>, MuonState) {
        let compute = writer.compute();
        let grad = in_dtype(grad, compute);
        let momentum_buffer = match state {
            Some(state) => writer.state_axpy(
                state.momentum_buffer,
                grad.clone(),
                self.momentum,
                Stream::MomentumBuffer,
            ),
            None => writer.state(grad.clone(), Stream::MomentumBuffer),
        };
        let nesterov = axpby(grad, momentum_buffer.clone(), 1.0, self.momentum);
        let ortho = newton_schulz(nesterov.reshape([rows, cols]), self.ns_steps, self.ns_dtype);
        let (outputs, inputs) = match self.layout {
            WeightLayout::OutIn => (rows, cols),
            WeightLayout::InOut => (cols, rows),
        };
        let shape_factor = (outputs as f64 / inputs as f64).max(1.0).sqrt();
        let mut direction = ortho.reshape([rows * cols]);
        if self.weight_decay != 0.0 {
            // Scaled by lr·shape below: lr·wd·w.
            let decay = self.weight_decay / shape_factor;
            direction =
                in_dtype(direction, compute) + in_dtype(param.clone(), compute).mul_scalar(decay);
        }
        let param = writer.weights(param, direction, lr * shape_factor);
        (param, MuonState { momentum_buffer })
    }
}

/// The quintic Newton–Schulz coefficients of the record.
pub const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// `X = G/(‖G‖_F + 1e-7)` in `dtype` (transposed when rows > cols), then `steps` times
/// `A = X·Xᵀ; X = a·X + (b·A + c·A·A)·X`, transposed back. Returns `dtype`.
pub fn newton_schulz(grad: Tensor<2>, steps: usize, dtype: FloatDType) -> Tensor<2> {
    let (a, b, c) = NS_COEFFICIENTS;
    let [rows, cols] = grad.dims();
    // The Frobenius norm accumulates in fp32 (as PyTorch's bf16 `norm` does), then rounds.
    let norm = square_sum(grad.clone()).sqrt();
    let norm = norm.cast(dtype).add_scalar(1e-7);
    let mut x = grad.cast(dtype) / norm.unsqueeze();
    let tall = rows > cols;
    if tall {
        x = x.transpose();
    }
    for _ in 0..steps {
        // The record's order: the polynomial in A (rows × rows, the small side) first, then one
        // product with X — a quarter fewer FLOPs than b·A·X + c·A·(A·X) for a wide X.
        let gram = matmul(x.clone(), x.clone().transpose());
        let polynomial = gram.clone().mul_scalar(b) + matmul(gram.clone(), gram).mul_scalar(c);
        x = x.clone().mul_scalar(a) + matmul(polynomial, x);
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

    #[test]
    fn matches_a_float64_reference_in_both_orientations() {
        let device = brainfloat_test_support::test_device();
        for (rows, cols) in [(4, 6), (6, 4), (5, 5)] {
            let g: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3 + (i as f32).sin())
                .collect();
            let want = reference(
                &g.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                rows,
                cols,
                5,
            );
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (dtype, tolerance) in [(FloatDType::F32, 1e-5), (FloatDType::BF16, 0.1)] {
                let grad = Tensor::<2>::from_data(
                    TensorData::new(g.clone(), [rows, cols]),
                    (&device, DType::F32),
                );
                let x = newton_schulz(grad, 5, dtype);
                assert_eq!(x.dtype(), DType::from(dtype));
                assert_eq!(x.dims(), [rows, cols]);
                let got = x
                    .cast(FloatDType::F32)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - b).abs() / scale)
                    .fold(0.0, f64::max);
                let l2 = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
                let frobenius = l2(&mut got.iter().zip(&want).map(|(a, b)| *a as f64 - b))
                    / l2(&mut want.iter().copied());
                println!("{rows}×{cols} {dtype:?}: worst {worst:.2e}, frobenius {frobenius:.2e}");
                // fp32 agrees element by element (measured ≤ 1.3e-6). In bf16 each of the five
                // quintic iterations re-rounds and amplifies the previous rounding, so the result
                // drifts 5–8 % (Frobenius) from the exact map, as PyTorch's bf16 Muon does; the
                // bf16 training curve against PyTorch (tests/golden_curve.rs) checks its effect.
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
