//! The output head fused with the record's loss (soft-capped logits, cross-entropy in fp32).
//!
//! The loss and its gradient with respect to the logits are computed in one untracked pass,
//! and the autodiff graph gets the gradients the logits would have passed back attached to the
//! head's inputs ([`brainfloat_ops::attach_gradient`]): this is the head's hand-written
//! backward, here rather than in `brainfloat_ops::autodiff` because it is made of ops (two
//! products per chunk of rows) rather than a kernel's backward. Written op by op, the soft-cap,
//! cast, log-softmax and gather put a dozen logits-sized tensors (8 × 256 × 50304 values for
//! the `small` model) through the allocator in each direction; fused, the tensors it owns are
//! updated in place, and the logits themselves are never kept.

use brainfloat_ops::{accumulate_f32, matmul};
use burn::module::Param;
use burn::tensor::{FloatDType, Int, Tensor};

use crate::casted_linear::{CastedLinear, WeightLayout};
use crate::policy::{ACCUMULATION_DTYPE, ComputeDtypes};

/// The record's logit soft-cap: `cap · tanh(logits / cap)`, computed in the logits' dtype.
pub fn softcap<const D: usize>(logits: Tensor<D>, cap: f64) -> Tensor<D> {
    logits.div_scalar(cap).tanh().mul_scalar(cap)
}

/// A way to compute the loss of logits rows and its gradient ([`FusedLoss::compute`]).
#[cfg(test)]
type ComputeLoss = fn(Tensor<2>, Tensor<1, Int>, Option<f64>, bool, usize) -> FusedLoss;

/// (Tests: the fused head against this loss of the logits computed whole.)
/// The record's loss: optional soft-cap in the logits' dtype, then fp32 cross-entropy averaged
/// over all positions, with the loss and its gradient computed by `compute`. `logits`
/// `[B, T, V]`, `targets` `[B, T]`; a one-element fp32 tensor. Numerically the same as
/// [`softcap`] followed by [`cross_entropy_fp32`]; the gradient reaching the logits is the
/// analytic one, `(softmax − onehot) / N · (1 − tanh²)`, in fp32, cast to the logits' dtype.
#[cfg(test)]
fn loss_by(
    compute: ComputeLoss,
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    cap: Option<f64>,
) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    let logits = logits.reshape([batch * seq, vocab]);
    let targets = targets.reshape([batch * seq]);
    if !logits.is_tracked() {
        return compute(logits, targets, cap, false, batch * seq).loss;
    }
    let fused = compute(
        logits.clone().inner(),
        targets.inner(),
        cap,
        true,
        batch * seq,
    );
    let grad = fused.grad.expect("asked for");
    with_gradients(fused.loss, [(logits, grad)])
}

/// `loss` (a value outside autodiff) with each tracked tensor's given gradient attached
/// ([`brainfloat_ops::attach_gradient`]): no product of a tensor with its gradient enters the
/// graph, so the loss's value is untouched and the backward pass does no logits-sized work.
fn with_gradients<const D: usize>(
    loss: Tensor<1>,
    pairs: impl IntoIterator<Item = (Tensor<D>, Tensor<D>)>,
) -> Tensor<1> {
    pairs
        .into_iter()
        .fold(Tensor::from_inner(loss), |loss, (tracked, grad)| {
            brainfloat_ops::attach_gradient(loss, tracked, Tensor::from_inner(grad))
        })
}

// The head's partial gradients add up in `accumulate_f32`: the accumulation dtype is fp32.
const _: () = assert!(matches!(ACCUMULATION_DTYPE, FloatDType::F32));

/// `sum + part`, or `part` for the first one.
fn accumulate<const D: usize>(sum: Option<Tensor<D>>, part: Tensor<D>) -> Option<Tensor<D>> {
    Some(match sum {
        Some(sum) => sum + part,
        None => part,
    })
}

impl CastedLinear {
    /// The record's output head and loss in one:
    /// `softcapped_cross_entropy(self.forward(hidden), targets, cap)`, with the logits made,
    /// used and dropped inside, [`LOGITS_PER_CHUNK`] at a time ([`head_loss`]), under the
    /// layer's dtypes.
    pub fn softcapped_cross_entropy(
        &self,
        hidden: Tensor<3>,
        targets: Tensor<2, Int>,
        cap: Option<f64>,
    ) -> Tensor<1> {
        self.chunked_cross_entropy(hidden, targets, cap, LOGITS_PER_CHUNK)
    }

    /// [`softcapped_cross_entropy`](Self::softcapped_cross_entropy) with `logits_per_chunk`
    /// logits at a time instead of [`LOGITS_PER_CHUNK`]: smaller chunks keep less memory and
    /// run smaller products (the `head_chunks` example measures the trade).
    pub fn chunked_cross_entropy(
        &self,
        hidden: Tensor<3>,
        targets: Tensor<2, Int>,
        cap: Option<f64>,
        logits_per_chunk: usize,
    ) -> Tensor<1> {
        let weight = match self.layout() {
            WeightLayout::OutIn => self.weight.val(),
            WeightLayout::InOut => self.weight.val().transpose(),
        };
        let head = Head {
            weight,
            bias: self.bias.as_ref().map(Param::val),
        };
        head_loss(head, hidden, targets, cap, self.dtypes(), logits_per_chunk)
    }
}

/// An output head's parameters as tensors: a CastedLinear's, or a table tied to the embedding.
pub struct Head {
    /// `[vocab, d_model]`, in its storage dtype (cast to the matmul dtype inside).
    pub weight: Tensor<2>,
    /// `[vocab]`, if the head has a bias.
    pub bias: Option<Tensor<1>>,
}

impl Head {
    /// The logits `[B, T, vocab]` of `hidden` `[B, T, C]` in the activation dtype, the product
    /// in the matmul dtype: what [`CastedLinear::forward`] gives for an `[out, in]` head
    /// (for evaluation and sampling; training takes [`head_loss`]).
    pub fn logits(self, hidden: Tensor<3>, dtypes: ComputeDtypes) -> Tensor<3> {
        let [batch, seq, d_model] = hidden.dims();
        let hidden = hidden.reshape([batch * seq, d_model]).cast(dtypes.matmul);
        let weight = self.weight.cast(dtypes.matmul);
        let vocab = weight.dims()[0];
        let mut logits = matmul(hidden, weight.transpose());
        if let Some(bias) = self.bias {
            logits = logits + bias.cast(dtypes.matmul).unsqueeze();
        }
        logits.cast(dtypes.activation).reshape([batch, seq, vocab])
    }
}

/// The output head and the loss in one: `cross_entropy_fp32(softcap(hidden · Wᵀ + b))` with
/// the logits made, used and dropped inside, `logits_per_chunk` at a time. Autodiff sees only
/// `hidden` `[B, T, C]` and the head's parameters, with the gradients the logits would have
/// passed back (the same two matmuls in the matmul dtype; the weight's partial sums over
/// chunks add in fp32): no logits-sized tensor is kept from the forward pass to the backward
/// pass or goes through the autodiff graph. A tied head passes the embedding table: its
/// gradient adds to the lookup's.
pub fn head_loss(
    head: Head,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
    cap: Option<f64>,
    dtypes: ComputeDtypes,
    logits_per_chunk: usize,
) -> Tensor<1> {
    let [batch, seq, d_model] = hidden.dims();
    let rows = batch * seq;
    let hidden = hidden.reshape([rows, d_model]).cast(dtypes.matmul);
    let weight = head.weight.cast(dtypes.matmul);
    let bias = head.bias.map(|b| b.cast(dtypes.matmul));
    let tracked = hidden.is_tracked() || weight.is_tracked();
    // The values, outside autodiff (`detach` keeps a leaf parameter's tensor tracked).
    let hidden_value = hidden.clone().inner();
    let weight_value = weight.clone().inner();
    let bias_value = bias.clone().map(Tensor::inner);
    let targets = targets.reshape([rows]).inner();

    let vocab = weight_value.dims()[0];
    let chunk_rows = rows_per_chunk(rows, vocab, logits_per_chunk);
    let mut loss: Option<Tensor<1>> = None;
    let mut grad_hidden = Vec::with_capacity(rows.div_ceil(chunk_rows.max(1)));
    let mut grad_weight: Option<Tensor<2>> = None;
    let mut grad_bias: Option<Tensor<1>> = None;
    for start in (0..rows).step_by(chunk_rows.max(1)) {
        let len = chunk_rows.min(rows - start);
        let hidden_rows = hidden_value.clone().narrow(0, start, len);
        let mut logits = matmul(hidden_rows.clone(), weight_value.clone().transpose());
        if let Some(bias) = &bias_value {
            logits = logits + bias.clone().unsqueeze();
        }
        let part = FusedLoss::compute(
            logits.cast(dtypes.activation),
            targets.clone().narrow(0, start, len),
            cap,
            tracked,
            rows,
        );
        loss = accumulate(loss, part.loss);
        let Some(grad_logits) = part.grad else {
            continue;
        };
        let grad_logits = grad_logits.cast(dtypes.matmul);
        grad_hidden.push(matmul(grad_logits.clone(), weight_value.clone()));
        if bias_value.is_some() {
            let part = grad_logits.clone().sum_dim(0).squeeze_dim(0);
            grad_bias = Some(accumulate_f32(grad_bias, part));
        }
        let part = matmul(grad_logits.transpose(), hidden_rows);
        grad_weight = Some(accumulate_f32(grad_weight, part));
    }
    let loss = loss.expect("a batch has at least one row");
    let Some(grad_weight) = grad_weight else {
        return Tensor::from_inner(loss);
    };
    let mut pairs = vec![
        (hidden, Tensor::cat(grad_hidden, 0)),
        (weight, grad_weight.cast(dtypes.matmul)),
    ];
    if let (Some(bias), Some(grad_bias)) = (bias, grad_bias) {
        pairs.push((bias.unsqueeze(), grad_bias.cast(dtypes.matmul).unsqueeze()));
    }
    with_gradients(loss, pairs)
}

/// Rows of logits per chunk of [`CastedLinear::chunked_cross_entropy`]: `rows` split into as
/// few equal chunks as keep each within `logits_per_chunk` logits (one row at least).
pub fn rows_per_chunk(rows: usize, vocab: usize, logits_per_chunk: usize) -> usize {
    let chunks = (rows * vocab)
        .div_ceil(logits_per_chunk)
        .clamp(1, rows.max(1));
    rows.div_ceil(chunks)
}

/// Logits computed at once by [`CastedLinear::softcapped_cross_entropy`]: 32 Mi values (128 MiB
/// in fp32), so the `small` model's 2048 × 50304 logits come in 4 chunks of 512 rows.
pub const LOGITS_PER_CHUNK: usize = 32 << 20;

/// The loss of a batch of logits and, when asked, its gradient with respect to them.
struct FusedLoss {
    /// The rows' share of the batch's mean cross-entropy, fp32 `[1]`.
    loss: Tensor<1>,
    /// d loss / d logits `[N, V]`, in the logits' dtype.
    grad: Option<Tensor<2>>,
}

impl FusedLoss {
    /// `logits` `[N, V]` are values outside autodiff, rows of a batch of `batch_rows` that the
    /// loss averages over ([`brainfloat_ops::softcapped_cross_entropy`]: one fused pass per
    /// row where the backend has the kernel). The logits move in: the gradient can take over
    /// their buffer.
    fn compute(
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        cap: Option<f64>,
        with_grad: bool,
        batch_rows: usize,
    ) -> Self {
        let (loss, grad) =
            brainfloat_ops::softcapped_cross_entropy(logits, targets, cap, batch_rows, with_grad);
        Self { loss, grad }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{DType, TensorData};

    /// Mean cross-entropy of `logits` `[N, V]` (any float dtype) against `targets` `[N]`, computed in
    /// fp32 whatever the logits' dtype: the logits are cast once, then a max-shifted log-softmax
    /// keeps it stable for any magnitude. Returns a one-element fp32 tensor.
    fn cross_entropy_fp32(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
        let logits = logits.cast(ACCUMULATION_DTYPE);
        let log_probs = log_softmax(logits, 1);
        let picked = log_probs.gather(1, targets.unsqueeze_dim(1));
        picked.mean().neg()
    }

    /// Cross-entropy in float64, written out: `logsumexp(z) − z[target]`, max-shifted.
    fn reference(logits: &[f64], vocab: usize, targets: &[usize], cap: Option<f64>) -> f64 {
        let rows = logits.chunks(vocab).zip(targets).map(|(row, &target)| {
            let z: Vec<f64> = row
                .iter()
                .map(|&x| cap.map_or(x, |c| c * (x / c).tanh()))
                .collect();
            let max = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - z[target]
        });
        rows.sum::<f64>() / targets.len() as f64
    }

    /// [`FusedLoss::compute`] with Burn's ops: the composed op, which backends without the
    /// kernel run.
    fn composed(
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        cap: Option<f64>,
        with_grad: bool,
        batch_rows: usize,
    ) -> FusedLoss {
        use burn::backend::Dispatch;
        let (loss, grad) = brainfloat_ops::composed::softcapped_cross_entropy::<Dispatch>(
            logits.into_dispatch(),
            targets.into_dispatch(),
            cap,
            batch_rows,
            with_grad,
        );
        FusedLoss {
            loss: Tensor::from_dispatch(loss),
            grad: grad.map(Tensor::from_dispatch),
        }
    }

    /// The two ways the loss is computed: the backend's op (a fused kernel on flex and
    /// libtorch's CPU), and the composed op, which GPUs run.
    const ROUTES: [(&str, ComputeLoss); 2] =
        [("fused", FusedLoss::compute), ("composed", composed)];

    fn loss(
        compute: ComputeLoss,
        logits: &[f32],
        dtype: DType,
        targets: &[i64],
        cap: Option<f64>,
    ) -> (f64, DType) {
        let device = brainfloat_test_support::test_device();
        let vocab = logits.len() / targets.len();
        let logits = Tensor::<3>::from_data(
            TensorData::new(logits.to_vec(), [1, targets.len(), vocab]),
            (&device, dtype),
        );
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(targets.to_vec(), [1, targets.len()]),
            &device,
        );
        let loss = loss_by(compute, logits, targets, cap);
        let dtype = loss.dtype();
        (loss.into_scalar::<f32>() as f64, dtype)
    }

    #[test]
    fn matches_float64_and_is_fp32_for_any_logit_dtype() {
        let logits = [0.5f32, -1.25, 3.0, 0.0, 2.0, 2.0, -4.0, 1.5];
        let targets = [2i64, 0];
        let as_f64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        for (cap, (route, compute)) in [None, Some(30.0), Some(2.0)]
            .into_iter()
            .flat_map(|cap| ROUTES.map(|route| (cap, route)))
        {
            let want = reference(&as_f64, 4, &[2, 0], cap);
            let (fp32, dtype) = loss(compute, &logits, DType::F32, &targets, cap);
            assert_eq!(dtype, DType::F32);
            // Shifted by the cap, the two terms of a token's loss are up to 2·cap in size:
            // their fp32 rounding, not the method, bounds the agreement.
            let rounding = cap.map_or(0.0, |c| 2.0 * c * f32::EPSILON as f64);
            assert!(
                (fp32 - want).abs() <= 1e-6 * want + rounding,
                "{route} {cap:?}: {fp32} vs {want}"
            );
            // These logits are exact in bf16; only the bf16 soft-cap rounds.
            let (bf16, dtype) = loss(compute, &logits, DType::BF16, &targets, cap);
            assert_eq!(dtype, DType::F32);
            assert!(
                (bf16 - want).abs() / want <= 1e-2,
                "{route} {cap:?}: {bf16} vs {want}"
            );
        }
    }

    /// d loss / d logits in float64: `(softmax(z') − onehot) / N · dz'/dz`, z' the capped logits.
    fn reference_grad(
        logits: &[f64],
        vocab: usize,
        targets: &[usize],
        cap: Option<f64>,
    ) -> Vec<f64> {
        let n = targets.len() as f64;
        logits
            .chunks(vocab)
            .zip(targets)
            .flat_map(|(row, &target)| {
                let z: Vec<f64> = row
                    .iter()
                    .map(|&x| cap.map_or(x, |c| c * (x / c).tanh()))
                    .collect();
                let max = z.iter().cloned().fold(f64::MIN, f64::max);
                let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
                row.iter().enumerate().map(move |(i, &x)| {
                    let p = (z[i] - max).exp() / sum - if i == target { 1.0 } else { 0.0 };
                    let slope = cap.map_or(1.0, |c| 1.0 - (x / c).tanh().powi(2));
                    p / n * slope
                })
            })
            .collect()
    }

    #[test]
    fn the_gradient_reaching_the_logits_matches_float64_in_their_dtype() {
        let device = brainfloat_test_support::test_device().autodiff();
        let logits = [
            0.5f32, -1.25, 3.0, 0.0, 2.0, 2.0, -4.0, 1.5, 40.0, -0.5, 1.0, 7.0,
        ];
        let targets = [2i64, 0, 3];
        let as_f64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        for cap in [None, Some(30.0), Some(2.0), Some(50.0)] {
            let want = reference_grad(&as_f64, 4, &[2, 0, 3], cap);
            for ((dtype, tolerance), (route, compute)) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)]
                .into_iter()
                .flat_map(|dtype| ROUTES.map(|route| (dtype, route)))
            {
                let z = Tensor::<3>::from_data(
                    TensorData::new(logits.to_vec(), [1, 3, 4]),
                    (&device, dtype),
                )
                .require_grad();
                let targets =
                    Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [1, 3]), &device);
                let loss = loss_by(compute, z.clone(), targets, cap);
                let want_loss = reference(&as_f64, 4, &[2, 0, 3], cap);
                let value = loss.clone().into_scalar::<f32>() as f64;
                assert!(
                    (value - want_loss).abs() <= tolerance * want_loss,
                    "{route} {cap:?} {dtype:?}: {value} vs {want_loss}"
                );
                let grads = loss.backward();
                let grad = z.grad(&grads).unwrap();
                assert_eq!(grad.dtype(), dtype, "the gradient keeps the logits' dtype");
                let grad = grad
                    .cast(FloatDType::F32)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                // Relative to the largest entry: bf16 rounds each entry to 8 significant bits.
                let scale = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
                for (i, (g, w)) in grad.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= tolerance * scale,
                        "{route} {cap:?} {dtype:?} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The fused head and loss against the same computation op by op under autodiff: loss and
    /// the gradients of the hidden states, weight and bias, in each preset.
    #[test]
    fn the_fused_head_matches_the_head_then_the_loss() {
        use crate::{CastedLinearConfig, PrecisionAware, PrecisionPolicy, cast_params};
        use burn::tensor::Distribution;
        let device = brainfloat_test_support::test_device().autodiff();
        let (batch, seq, d_model, vocab) = (2, 3, 8, 11);
        // Measured (AMD EPYC; flex, libtorch's CPU): fp32 7.4e-8, 1.0e-7; autocast 6.8e-3,
        // 4.2e-3; bf16 5.5e-3, 4.5e-3 of the largest value; the bounds are a few times that.
        for (preset, tolerance) in [("fp32", 5e-7), ("autocast", 2e-2), ("bf16", 2e-2)] {
            let policy: PrecisionPolicy = preset.parse().unwrap();
            let head = CastedLinearConfig::new(d_model, vocab)
                .with_bias(true)
                .init(&device);
            let head = cast_params(head, &policy).unwrap().with_policy(policy);
            let hidden = Tensor::<3>::random(
                [batch, seq, d_model],
                Distribution::Normal(0.0, 3.0),
                (&device, DType::F32),
            )
            .cast(policy.activation());
            let targets = Tensor::<2, Int>::from_data(
                TensorData::new(vec![0i64, 3, 10, 7, 7, 1], [batch, seq]),
                &device,
            );
            // None: op by op; Some(n): fused, n logits per chunk (1 chunk, 3 chunks of 2 rows).
            let run = |chunk: Option<usize>| {
                let hidden = hidden.clone().detach().require_grad();
                let loss = if let Some(chunk) = chunk {
                    head.chunked_cross_entropy(hidden.clone(), targets.clone(), Some(2.0), chunk)
                } else {
                    let logits = head.forward(hidden.clone());
                    let [b, t, v] = logits.dims();
                    cross_entropy_fp32(
                        softcap(logits, 2.0).reshape([b * t, v]),
                        targets.clone().reshape([b * t]),
                    )
                };
                let grads = loss.backward();
                let flat = |t: Tensor<1>| {
                    t.cast(FloatDType::F32)
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap()
                };
                let hidden_grad = hidden.grad(&grads).unwrap();
                let weight_grad = head.weight.val().grad(&grads).unwrap();
                let bias_grad = head.bias.as_ref().unwrap().val().grad(&grads).unwrap();
                assert_eq!(hidden_grad.dtype(), hidden.dtype(), "{preset}");
                assert_eq!(weight_grad.dtype(), head.weight.val().dtype(), "{preset}");
                (
                    loss.into_scalar::<f32>(),
                    [
                        flat(hidden_grad.flatten(0, 2)),
                        flat(weight_grad.flatten(0, 1)),
                        flat(bias_grad),
                    ],
                )
            };
            let (loss, grads) = run(None);
            for chunk in [LOGITS_PER_CHUNK, 2 * vocab] {
                let (fused_loss, fused_grads) = run(Some(chunk));
                assert!(
                    ((fused_loss - loss) / loss).abs() as f64 <= tolerance,
                    "{preset} {chunk}: {fused_loss} vs {loss}"
                );
                for (fused, plain) in fused_grads.iter().zip(&grads) {
                    let scale = plain.iter().fold(0.0f32, |m, g| m.max(g.abs())) as f64;
                    assert!(scale > 0.0);
                    for (a, b) in fused.iter().zip(plain) {
                        assert!(
                            ((a - b) as f64).abs() <= tolerance * scale,
                            "{preset} {chunk}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stays_finite_and_exact_for_huge_logits() {
        // exp(1e4) overflows any float; the max shift keeps the loss exact.
        let logits = [1.0e4f32, 0.0, -1.0e4, 1.0e4 - 2.0];
        let want = reference(&logits.map(|x| x as f64), 4, &[3], None);
        for (route, compute) in ROUTES {
            let (value, _) = loss(compute, &logits, DType::F32, &[3], None);
            assert!(value.is_finite(), "{route}");
            assert!((value - want).abs() <= 1e-5, "{route}: {value} vs {want}");
        }
        assert!((want - (2.0 + (1.0 + (-2.0f64).exp()).ln())).abs() < 1e-12);
    }

    #[test]
    fn softcap_bounds_logits_by_the_cap() {
        let device = brainfloat_test_support::test_device();
        let x = Tensor::<1>::from_floats([0.0, 30.0, -300.0, 1.0e6], &device);
        let y = softcap(x, 30.0).into_data().try_to_vec::<f32>().unwrap();
        let want = [0.0, 30.0 * 1f64.tanh(), -30.0 * 10f64.tanh(), 30.0];
        for (a, b) in y.iter().zip(want) {
            assert!((*a as f64 - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}
