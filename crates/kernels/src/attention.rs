//! Causal attention in bf16 as PyTorch's CPU `scaled_dot_product_attention` computes it (its
//! flash-attention kernel), so that a bf16 run rounds where PyTorch's rounds:
//!
//! - **forward**, per block of query rows: the scores `q·kᵀ` are fp32 accumulators, masked and
//!   scaled in fp32; per block of keys the row maxima, the exponentials `e = exp(s − max)` (by
//!   PyTorch's fast approximation, [`exp_fast`], as its AVX-512 and AVX2 builds take them) and
//!   the row sums are fp32, and `e` is rounded to bf16 for the product with the values, which
//!   accumulates in fp32 (rescaled when a later key block raises a row's maximum); the output
//!   is that accumulator times `1/sum`, rounded once to bf16.
//! - **backward**, per block of query rows: `P = exp(s − lse)` in fp32 from the row's
//!   log-sum-exp, `dP = dO·vᵀ` in fp32, `dS = P ⊙ (dP − Σ dO⊙O)` in fp32 rounded to bf16; then
//!   `dV += bf16(P)ᵀ·dO`, `dQ += scale·dS·k` and `dK += scale·dSᵀ·q`, each sum rounded to bf16
//!   once per block (PyTorch's GEMMs accumulate into the bf16 gradients).
//!
//! The forward saves nothing but its output: the backward recomputes the scores and, with the
//! forward's own code, each row's log-sum-exp, bit for bit.
//!
//! Tensors are row-major `[matrices, rows, head_dim]` bf16; query `i` sees keys up to
//! `i + keys − queries` (the last queries aligned with the last keys).

use std::borrow::Cow;

use half::bf16;
use rayon::prelude::*;

use crate::elem::Float;
use crate::gemm::{Matrix, Output, gemm};
use crate::math::{exp, exp_fast, lane_fold};
use crate::path::fma_multiversion;

/// Keys per block of PyTorch's kernel.
const KEY_BLOCK: usize = 512;

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch × heads: independent attention matrices.
    pub matrices: usize,
    /// Query rows per matrix.
    pub queries: usize,
    /// Key (and value) rows per matrix.
    pub keys: usize,
    /// Elements per query, key and value row.
    pub head_dim: usize,
}

impl AttentionShape {
    /// `1/√head_dim` in fp32, as PyTorch computes it (in float64, then rounded).
    pub fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }

    /// Query rows per block of PyTorch's kernel, which picks them by the query length.
    pub fn query_block(&self) -> usize {
        match self.queries {
            768.. => 256,
            192.. => 64,
            _ => 32,
        }
    }

    /// Keys query `row` sees.
    fn visible(&self, row: usize) -> usize {
        (row + 1 + self.keys)
            .saturating_sub(self.queries)
            .min(self.keys)
    }

    fn check(&self, name: &str, len: usize, rows: usize) {
        assert_eq!(
            len,
            self.matrices * rows * self.head_dim,
            "{name}: {len} elements for {self:?}"
        );
    }
}

/// One query row's softmax carried over key blocks: the running maximum and sum of
/// exponentials, fp32.
#[derive(Debug, Clone, Copy)]
struct RowSoftmax {
    max: f32,
    sum: f32,
}

impl RowSoftmax {
    const EMPTY: Self = Self {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// Takes one key block's scaled, masked scores of the row: writes `exp(s − max)` with the
    /// new running maximum into `exps` and returns the factor that rescales what the earlier
    /// blocks contributed.
    /// `vectorised`: how many of the block's keys PyTorch's kernel exponentiates in whole
    /// vectors (see [`exps_and_sum`]).
    fn add_block(&mut self, scores: &[f32], vectorised: usize, exps: &mut [f32]) -> f32 {
        let max = self.max.max(lane_fold(scores, f32::NEG_INFINITY, f32::max));
        if max == f32::NEG_INFINITY {
            exps.fill(0.0);
            return 1.0;
        }
        let sum = exps_and_sum(scores, max, vectorised, exps);
        let rescale = (self.max - max).exp();
        self.sum = sum + rescale * self.sum;
        self.max = max;
        rescale
    }

    /// `1/sum` (1 for a row that saw no key).
    fn inverse_sum(&self) -> f32 {
        1.0 / if self.sum == 0.0 { 1.0 } else { self.sum }
    }

    /// `max + ln(sum)`, the backward's normaliser.
    fn log_sum_exp(&self) -> f32 {
        let max = if self.max == f32::NEG_INFINITY {
            0.0
        } else {
            self.max
        };
        max + (if self.sum == 0.0 { 1.0 } else { self.sum }).ln()
    }
}

/// One block of query rows of one matrix: where it starts, how many rows, how many keys its
/// last row sees.
#[derive(Debug, Clone, Copy)]
struct QueryBlock {
    first: usize,
    rows: usize,
    keys: usize,
}

impl QueryBlock {
    fn new(shape: &AttentionShape, first: usize, rows: usize) -> Self {
        Self {
            first,
            rows,
            keys: shape.visible(first + rows - 1),
        }
    }

    /// The block's scores `q·kᵀ` over the keys it sees, masked (−∞) and scaled, fp32
    /// `[rows, self.keys]`.
    fn scores(&self, shape: &AttentionShape, query: &[bf16], key: &[bf16]) -> Vec<f32> {
        let d = shape.head_dim;
        let mut scores = vec![0.0f32; self.rows * self.keys];
        gemm(
            Matrix::row_major(query, self.rows, d),
            Matrix::row_major(&key[..self.keys * d], self.keys, d).transpose(),
            Output::F32(&mut scores),
        );
        let scale = shape.scale();
        for (r, row) in scores.chunks_mut(self.keys).enumerate() {
            let seen = shape.visible(self.first + r);
            row[seen..].fill(f32::NEG_INFINITY);
            row.iter_mut().for_each(|s| *s *= scale);
        }
        scores
    }

    /// Each row's softmax over the block's `scores`, key block by key block; `each_block`
    /// receives the key block's first key, the exponentials (fp32 `[rows, keys in block]`)
    /// and each row's rescale factor.
    fn softmax(
        &self,
        shape: &AttentionShape,
        scores: &[f32],
        mut each_block: impl FnMut(usize, &[f32], &[f32]),
    ) -> Vec<RowSoftmax> {
        let mut rows = vec![RowSoftmax::EMPTY; self.rows];
        let mut exps = Vec::new();
        let mut rescales = vec![1.0f32; self.rows];
        for first in (0..self.keys).step_by(KEY_BLOCK) {
            let width = KEY_BLOCK.min(self.keys - first);
            // PyTorch's key block spans every remaining key, those the mask hides included.
            let vectorised = KEY_BLOCK.min(shape.keys - first) / LANES * LANES;
            exps.resize(self.rows * width, 0.0);
            for (r, softmax) in rows.iter_mut().enumerate() {
                let row = &scores[r * self.keys + first..][..width];
                let exps = &mut exps[r * width..][..width];
                rescales[r] = softmax.add_block(row, vectorised, exps);
            }
            each_block(first, &exps, &rescales);
        }
        rows
    }
}

/// fp32 lanes of PyTorch's vectors on the AVX-512 machines it dispatches its kernel for.
const LANES: usize = 16;

fma_multiversion! {
    /// `exps = exp(scores − max)` and their sum, as PyTorch's kernel forms them: the first
    /// `vectorised` by [`exp_fast`] (its `fexp_u20`) summed in [`LANES`] lanes that fold as a
    /// tree, then the rest by libm's `expf`, added one by one.
    fn exps_and_sum(scores: &[f32], max: f32, vectorised: usize, exps: &mut [f32]) -> f32 {
        // Past `scores`, PyTorch's vectors hold masked keys: zeros, which leave the lanes as
        // they are.
        let split = vectorised.min(scores.len());
        let (vector_scores, tail_scores) = scores.split_at(split);
        let (vector_exps, tail_exps) = exps.split_at_mut(split);
        let mut lanes = [0.0f32; LANES];
        for (scores, exps) in vector_scores.chunks(LANES).zip(vector_exps.chunks_mut(LANES)) {
            for ((lane, s), e) in lanes.iter_mut().zip(scores).zip(exps.iter_mut()) {
                *e = exp_fast(s - max);
                *lane += *e;
            }
        }
        // PyTorch's `vec_reduce_all`: each lane plus the lane 8, 4, 2, then 1 apart.
        for distance in [8, 4, 2, 1] {
            let folded = lanes;
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane = folded[i] + folded[i ^ distance];
            }
        }
        let mut sum = lanes[0];
        for (s, e) in tail_scores.iter().zip(tail_exps) {
            *e = (s - max).exp();
            sum += *e;
        }
        sum
    }
}

/// The blocks of query rows of one matrix, as PyTorch's kernel splits them.
fn query_blocks(shape: &AttentionShape) -> impl Iterator<Item = QueryBlock> + '_ {
    let block = shape.query_block();
    (0..shape.queries)
        .step_by(block)
        .map(move |first| QueryBlock::new(shape, first, block.min(shape.queries - first)))
}

/// `softmax(q·kᵀ/√d + causal mask)·v` in bf16 into `output` `[matrices, queries, head_dim]`, as
/// PyTorch's CPU kernel computes it (see the module's documentation). Parallel over matrices
/// and blocks of query rows.
///
/// # Panics
/// When a slice's length does not match `shape`.
pub fn causal_attention(
    query: &[bf16],
    key: &[bf16],
    value: &[bf16],
    shape: AttentionShape,
    output: &mut [bf16],
) {
    let (d, queries, keys) = (shape.head_dim, shape.queries, shape.keys);
    shape.check("causal_attention query", query.len(), queries);
    shape.check("causal_attention key", key.len(), keys);
    shape.check("causal_attention value", value.len(), keys);
    shape.check("causal_attention output", output.len(), queries);
    if output.is_empty() {
        return;
    }
    let block_elements = shape.query_block() * d;
    let blocks: Vec<QueryBlock> = query_blocks(&shape).collect();
    output
        .par_chunks_mut(queries * d)
        .enumerate()
        .for_each(|(matrix, output)| {
            let query = &query[matrix * queries * d..][..queries * d];
            let key = &key[matrix * keys * d..][..keys * d];
            let value = &value[matrix * keys * d..][..keys * d];
            (output.par_chunks_mut(block_elements))
                .zip(&blocks)
                .for_each(|(output, &block)| {
                    let query = &query[block.first * d..][..block.rows * d];
                    forward_block(&shape, block, query, key, value, output);
                });
        });
}

/// [`causal_attention`] of one block of query rows.
fn forward_block(
    shape: &AttentionShape,
    block: QueryBlock,
    query: &[bf16],
    key: &[bf16],
    value: &[bf16],
    output: &mut [bf16],
) {
    let d = shape.head_dim;
    let scores = block.scores(shape, query, key);
    // The fp32 accumulator of `bf16(e)·v`, and one key block's product.
    let mut accumulator = vec![0.0f32; block.rows * d];
    let mut product = vec![0.0f32; block.rows * d];
    let mut exps_bf16 = Vec::new();
    let rows = block.softmax(shape, &scores, |first, exps, rescales| {
        let width = exps.len() / block.rows;
        exps_bf16.clear();
        exps_bf16.extend(exps.iter().map(|e| <bf16 as Float>::from_f32(*e)));
        gemm(
            Matrix::row_major(&exps_bf16, block.rows, width),
            Matrix::row_major(&value[first * d..][..width * d], width, d),
            Output::F32(&mut product),
        );
        let rows = accumulator.chunks_mut(d).zip(product.chunks(d));
        for ((sum, part), rescale) in rows.zip(rescales) {
            for (s, p) in sum.iter_mut().zip(part) {
                *s = if first == 0 { *p } else { *s * rescale + p };
            }
        }
    });
    for ((out, sum), softmax) in output.chunks_mut(d).zip(accumulator.chunks(d)).zip(&rows) {
        let inverse = softmax.inverse_sum();
        for (o, s) in out.iter_mut().zip(sum) {
            *o = <bf16 as Float>::from_f32(s * inverse);
        }
    }
}

/// The gradients of [`causal_attention`]'s query, key and value from its inputs, its `output`
/// and the output's gradient, in bf16, as PyTorch's CPU kernel computes them (see the module's
/// documentation). Parallel over matrices.
///
/// # Panics
/// When a slice's length does not match `shape`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward(
    query: &[bf16],
    key: &[bf16],
    value: &[bf16],
    output: &[bf16],
    grad_output: &[bf16],
    shape: AttentionShape,
    grad_query: &mut [bf16],
    grad_key: &mut [bf16],
    grad_value: &mut [bf16],
) {
    let (d, queries, keys) = (shape.head_dim, shape.queries, shape.keys);
    for (name, len) in [
        ("query", query.len()),
        ("output", output.len()),
        ("grad_output", grad_output.len()),
        ("grad_query", grad_query.len()),
    ] {
        shape.check(name, len, queries);
    }
    for (name, len) in [
        ("key", key.len()),
        ("value", value.len()),
        ("grad_key", grad_key.len()),
        ("grad_value", grad_value.len()),
    ] {
        shape.check(name, len, keys);
    }
    let (q_len, k_len) = (queries * d, keys * d);
    if q_len == 0 || k_len == 0 {
        // No query, no key or no element: every gradient is zero.
        for grad in [grad_query, grad_key, grad_value] {
            grad.fill(bf16::ZERO);
        }
        return;
    }
    (grad_query.par_chunks_mut(q_len))
        .zip(grad_key.par_chunks_mut(k_len))
        .zip(grad_value.par_chunks_mut(k_len))
        .enumerate()
        .for_each(|(matrix, ((grad_query, grad_key), grad_value))| {
            let inputs = MatrixInputs {
                query: &query[matrix * q_len..][..q_len],
                key: &key[matrix * k_len..][..k_len],
                value: &value[matrix * k_len..][..k_len],
                output: &output[matrix * q_len..][..q_len],
                grad_output: &grad_output[matrix * q_len..][..q_len],
            };
            backward_matrix(&shape, &inputs, grad_query, grad_key, grad_value);
        });
}

/// One matrix's inputs to the backward.
struct MatrixInputs<'a> {
    query: &'a [bf16],
    key: &'a [bf16],
    value: &'a [bf16],
    output: &'a [bf16],
    grad_output: &'a [bf16],
}

/// [`causal_attention_backward`] of one matrix.
fn backward_matrix(
    shape: &AttentionShape,
    inputs: &MatrixInputs<'_>,
    grad_query: &mut [bf16],
    grad_key: &mut [bf16],
    grad_value: &mut [bf16],
) {
    let d = shape.head_dim;
    let scale = shape.scale();
    grad_query.fill(bf16::ZERO);
    grad_key.fill(bf16::ZERO);
    grad_value.fill(bf16::ZERO);
    let mut products = vec![0.0f32; d];
    for block in query_blocks(shape) {
        let rows = block.first..block.first + block.rows;
        let query = &inputs.query[rows.start * d..rows.end * d];
        let grad_output = &inputs.grad_output[rows.start * d..rows.end * d];
        // Σ dO⊙O per row, fp32.
        let output = &inputs.output[rows.start * d..rows.end * d];
        let dot: Vec<f32> = (grad_output.chunks(d).zip(output.chunks(d)))
            .map(|(g, o)| {
                for ((p, g), o) in products.iter_mut().zip(g).zip(o) {
                    *p = g.to_f32() * o.to_f32();
                }
                lane_fold(&products, 0.0, |a, b| a + b)
            })
            .collect();
        let mut scores = block.scores(shape, query, inputs.key);
        let softmax = block.softmax(shape, &scores, |_, _, _| {});
        // P = exp(s − lse) in place of the scores (masked entries: exp(−∞) = 0).
        for (row, softmax) in scores.chunks_mut(block.keys).zip(&softmax) {
            let lse = softmax.log_sum_exp();
            row.iter_mut().for_each(|s| {
                *s = if *s == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp(*s - lse)
                }
            });
        }
        let probs = scores;
        for first in (0..block.keys).step_by(KEY_BLOCK) {
            let width = KEY_BLOCK.min(block.keys - first);
            let keys = first * d..(first + width) * d;
            // The key block's columns of `probs`: all of them (no copy) below 512 keys.
            let block_probs: Cow<'_, [f32]> = if width == block.keys {
                Cow::Borrowed(&probs)
            } else {
                (probs.chunks(block.keys))
                    .flat_map(|row| &row[first..first + width])
                    .copied()
                    .collect()
            };
            let probs_bf16: Vec<bf16> = block_probs.iter().map(|p| round(*p)).collect();
            // dV += bf16(P)ᵀ·dO.
            accumulate_product(
                Matrix::row_major(&probs_bf16, block.rows, width).transpose(),
                Matrix::row_major(grad_output, block.rows, d),
                1.0,
                &mut grad_value[keys.clone()],
            );
            // dS = P ⊙ (dO·vᵀ − Σ dO⊙O), rounded to bf16.
            let mut grad_probs = vec![0.0f32; block.rows * width];
            gemm(
                Matrix::row_major(grad_output, block.rows, d),
                Matrix::row_major(&inputs.value[keys.clone()], width, d).transpose(),
                Output::F32(&mut grad_probs),
            );
            let grad_scores: Vec<bf16> = (grad_probs.chunks(width))
                .zip(block_probs.chunks(width))
                .zip(&dot)
                .flat_map(|((dp, p), dot)| {
                    dp.iter().zip(p).map(move |(dp, p)| round(p * (dp - dot)))
                })
                .collect();
            let grad_scores = Matrix::row_major(&grad_scores, block.rows, width);
            // dQ += scale·dS·k, dK += scale·dSᵀ·q.
            accumulate_product(
                grad_scores,
                Matrix::row_major(&inputs.key[keys.clone()], width, d),
                scale,
                &mut grad_query[rows.start * d..rows.end * d],
            );
            accumulate_product(
                grad_scores.transpose(),
                Matrix::row_major(query, block.rows, d),
                scale,
                &mut grad_key[keys],
            );
        }
    }
}

/// `c = bf16(c + alpha·a·b)`: a product accumulated in fp32 and added to bf16 `c`, rounded once.
fn accumulate_product(a: Matrix<'_, bf16>, b: Matrix<'_, bf16>, alpha: f32, c: &mut [bf16]) {
    let mut product = vec![0.0f32; c.len()];
    gemm(a, b, Output::F32(&mut product));
    for (c, p) in c.iter_mut().zip(&product) {
        *c = round(alpha * p + c.to_f32());
    }
}

fn round(x: f32) -> bf16 {
    <bf16 as Float>::from_f32(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::scaled_values as values;

    /// One matrix's attention in float64, exactly, with its gradients.
    struct Reference {
        output: Vec<f64>,
        grad_query: Vec<f64>,
        grad_key: Vec<f64>,
        grad_value: Vec<f64>,
    }

    fn reference(shape: &AttentionShape, [q, k, v, g]: [&[bf16]; 4]) -> Reference {
        let (d, tq, tk) = (shape.head_dim, shape.queries, shape.keys);
        let f = |x: &[bf16]| -> Vec<f64> { x.iter().map(|v| v.to_f64()).collect() };
        let (q, k, v, g) = (f(q), f(k), f(v), f(g));
        let scale = 1.0 / (d as f64).sqrt();
        let mut probs = vec![0.0; tq * tk];
        for i in 0..tq {
            let seen = shape.visible(i);
            let scores: Vec<f64> = (0..seen)
                .map(|j| (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for j in 0..seen {
                probs[i * tk + j] = (scores[j] - max).exp() / sum;
            }
        }
        let mut r = Reference {
            output: vec![0.0; tq * d],
            grad_query: vec![0.0; tq * d],
            grad_key: vec![0.0; tk * d],
            grad_value: vec![0.0; tk * d],
        };
        for i in 0..tq {
            let grad_probs: Vec<f64> = (0..tk)
                .map(|j| (0..d).map(|c| g[i * d + c] * v[j * d + c]).sum())
                .collect();
            let dot: f64 = (0..tk).map(|j| probs[i * tk + j] * grad_probs[j]).sum();
            for j in 0..tk {
                let p = probs[i * tk + j];
                let grad_score = p * (grad_probs[j] - dot) * scale;
                for c in 0..d {
                    r.output[i * d + c] += p * v[j * d + c];
                    r.grad_value[j * d + c] += p * g[i * d + c];
                    r.grad_query[i * d + c] += grad_score * k[j * d + c];
                    r.grad_key[j * d + c] += grad_score * q[i * d + c];
                }
            }
        }
        r
    }

    /// Largest `|got − want|` over the largest `|want|`.
    fn error(got: &[bf16], want: &[f64]) -> f64 {
        let largest = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let worst = (got.iter().zip(want)).fold(0.0f64, |m, (g, w)| m.max((g.to_f64() - w).abs()));
        worst / largest
    }

    /// Ragged query blocks, key blocks past PyTorch's 512 (the running maximum's rescale), and
    /// fewer queries than keys (a generation step after cached keys): within bf16's rounding
    /// of the exact attention and its gradients (measured: ≤ 2.5e-3 forward, ≤ 6.1e-3 backward).
    #[test]
    fn forward_and_backward_match_float64_within_bf16_rounding() {
        let shapes = [
            (3, 70, 70, 16),
            (1, 600, 600, 8),
            (2, 5, 600, 8),
            (1, 1, 3, 4),
        ];
        for (matrices, queries, keys, head_dim) in shapes {
            let shape = AttentionShape {
                matrices,
                queries,
                keys,
                head_dim,
            };
            let [nq, nk] = [queries, keys].map(|t| matrices * t * head_dim);
            let (q, k, v) = (values(nq, 1, 0), values(nk, 2, 0), values(nk, 3, -1));
            let g = values(nq, 4, -1);
            let mut output = vec![bf16::ZERO; nq];
            causal_attention(&q, &k, &v, shape, &mut output);
            let (mut gq, mut gk, mut gv) = (
                vec![bf16::ZERO; nq],
                vec![bf16::ZERO; nk],
                vec![bf16::ZERO; nk],
            );
            causal_attention_backward(&q, &k, &v, &output, &g, shape, &mut gq, &mut gk, &mut gv);
            let [sq, sk] = [queries, keys].map(|t| t * head_dim);
            for m in 0..matrices {
                let (mq, mk) = (m * sq..(m + 1) * sq, m * sk..(m + 1) * sk);
                let want = reference(
                    &shape,
                    [
                        &q[mq.clone()],
                        &k[mk.clone()],
                        &v[mk.clone()],
                        &g[mq.clone()],
                    ],
                );
                let errors = [
                    error(&output[mq.clone()], &want.output),
                    error(&gq[mq], &want.grad_query),
                    error(&gk[mk.clone()], &want.grad_key),
                    error(&gv[mk], &want.grad_value),
                ];
                println!("{shape:?} matrix {m}: output, dq, dk, dv {errors:?}");
                assert!(errors[0] <= 6e-3, "{shape:?}: output {errors:?}");
                assert!(
                    errors[1..].iter().all(|e| *e <= 2e-2),
                    "{shape:?}: {errors:?}"
                );
            }
        }
    }

    /// The rounding is PyTorch's: the output is `bf16(Σ bf16(e)·v / Σ e)` with `e` the fp32
    /// exponentials of [`exp_fast`] — written out here in float64 from the same scores, it
    /// agrees bit for bit on nearly every element, where the same scheme with exact
    /// exponentials, and the exact softmax rounded once, do not.
    #[test]
    fn the_exponentials_are_rounded_to_bf16_for_the_product_with_the_values() {
        let shape = AttentionShape {
            matrices: 8,
            queries: 64,
            keys: 64,
            head_dim: 32,
        };
        let n = shape.matrices * shape.queries * shape.head_dim;
        let (q, k, v) = (values(n, 5, 1), values(n, 6, 1), values(n, 7, -1));
        let mut output = vec![bf16::ZERO; n];
        causal_attention(&q, &k, &v, shape, &mut output);
        let (d, t) = (shape.head_dim, shape.queries);
        let scale = shape.scale() as f64;
        let (mut scheme, mut exact_exps, mut exact) = (0usize, 0usize, 0usize);
        for m in 0..shape.matrices {
            for i in 0..t {
                fn row(x: &[bf16], index: usize, d: usize) -> &[bf16] {
                    &x[index * d..][..d]
                }
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let dot: f64 = (row(&q, m * t + i, d).iter().zip(row(&k, m * t + j, d)))
                            .map(|(a, b)| a.to_f64() * b.to_f64())
                            .sum();
                        dot * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let fast_exps: Vec<f64> = (scores.iter())
                    .map(|s| exp_fast(*s as f32 - max as f32) as f64)
                    .collect();
                for c in 0..d {
                    let mix = |exps: &[f64], weight: &dyn Fn(f64) -> f64| -> bf16 {
                        let total: f64 = (exps.iter().enumerate())
                            .map(|(j, e)| weight(*e) * row(&v, m * t + j, d)[c].to_f64())
                            .sum();
                        bf16::from_f64(total / exps.iter().sum::<f64>())
                    };
                    let rounded = |e: f64| bf16::from_f64(e).to_f64();
                    let got = output[(m * t + i) * d + c];
                    scheme += usize::from(got == mix(&fast_exps, &rounded));
                    exact_exps += usize::from(got == mix(&exps, &rounded));
                    exact += usize::from(got == mix(&exps, &|e| e));
                }
            }
        }
        let [scheme, exact_exps, exact] =
            [scheme, exact_exps, exact].map(|same| same as f64 / n as f64);
        println!(
            "bit-identical: {scheme:.4} to the scheme, {exact_exps:.4} to it with exact \
             exponentials, {exact:.4} to the exact softmax"
        );
        assert!(scheme >= 0.99, "{scheme}");
        assert!(exact_exps <= scheme - 0.01, "{exact_exps} vs {scheme}");
        assert!(exact <= scheme - 0.1, "{exact} vs {scheme}");
    }
}
