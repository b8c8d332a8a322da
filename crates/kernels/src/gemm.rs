//! `C = A·B`: bf16 operands, fp32 accumulation, a bf16 or fp32 result.

use gemmkit::{MatMut, MatRef, Parallelism};
use half::bf16;
use rayon::prelude::*;

use crate::elem::Float;

use crate::path::KernelPath;

/// A read-only `rows × cols` view of a slice: element `(i, j)` is
/// `data[i·row_stride + j·col_stride]`. Swapping the strides (and the dimensions) transposes it
/// without a copy.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> Matrix<'a, T> {
    /// A strided view.
    ///
    /// # Panics
    /// When an element of the view lies outside `data`.
    pub fn new(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(
                last < data.len(),
                "a {rows}×{cols} view with strides ({row_stride}, {col_stride}) reaches element \
                 {last} of a slice of {}",
                data.len()
            );
        }
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A row-major `rows × cols` view.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The same elements as a `cols × rows` view.
    pub fn transpose(self) -> Self {
        Self::new(
            self.data,
            self.cols,
            self.rows,
            self.col_stride,
            self.row_stride,
        )
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    #[inline(always)]
    pub(crate) fn at(&self, row: usize, col: usize) -> T
    where
        T: Copy,
    {
        self.data[row * self.row_stride + col * self.col_stride]
    }

    fn gemmkit(&self) -> MatRef<'a, T> {
        MatRef::new(
            self.data,
            self.rows,
            self.cols,
            self.row_stride as isize,
            self.col_stride as isize,
        )
    }
}

/// A stack of matrices `[.., rows, cols]` in one slice with any (non-negative) strides, the
/// first element at `data[0]`: an operand of [`batched_gemm`].
#[derive(Debug, Clone, Copy)]
pub struct MatrixStack<'a, T> {
    data: &'a [T],
    dims: &'a [usize],
    strides: &'a [usize],
}

impl<'a, T> MatrixStack<'a, T> {
    /// The stack of `dims` (rank ≥ 2) with element strides `strides`.
    ///
    /// # Panics
    /// When the ranks differ or are below 2, or (as [`Matrix::new`]) an element lies outside
    /// `data`.
    pub fn new(data: &'a [T], dims: &'a [usize], strides: &'a [usize]) -> Self {
        assert!(
            dims.len() >= 2 && strides.len() == dims.len(),
            "a matrix stack of dims {dims:?} and strides {strides:?}"
        );
        Self {
            data,
            dims,
            strides,
        }
    }

    /// The leading dimensions.
    fn leading(&self) -> &'a [usize] {
        &self.dims[..self.dims.len() - 2]
    }

    /// Matrix `index`, counted row-major over the leading dimensions.
    fn matrix(&self, index: usize) -> Matrix<'a, T> {
        let rank = self.dims.len();
        let mut offset = 0;
        let mut rest = index;
        for axis in (0..rank - 2).rev() {
            offset += (rest % self.dims[axis]) * self.strides[axis];
            rest /= self.dims[axis];
        }
        Matrix::new(
            &self.data[offset.min(self.data.len())..],
            self.dims[rank - 2],
            self.dims[rank - 1],
            self.strides[rank - 2],
            self.strides[rank - 1],
        )
    }
}

/// `C[i] = A[i]·B[i]` for every matrix of two stacks with the same leading dimensions, into a
/// row-major bf16 `[.., m, n]`: [`gemm()`] per matrix, the matrices in parallel (each product
/// also spreads over the cores when it is large enough).
///
/// # Panics
/// When the leading or inner dimensions differ, or `c` does not hold every product.
pub fn batched_gemm(a: MatrixStack<'_, bf16>, b: MatrixStack<'_, bf16>, c: &mut [bf16]) {
    assert_eq!(
        a.leading(),
        b.leading(),
        "batched_gemm: stacks of {:?} and {:?}",
        a.dims,
        b.dims
    );
    let (m, n) = (a.dims[a.dims.len() - 2], b.dims[b.dims.len() - 1]);
    let count: usize = a.leading().iter().product();
    assert_eq!(
        c.len(),
        count * m * n,
        "batched_gemm: C must hold {count}×{m}×{n}"
    );
    if c.is_empty() {
        return;
    }
    c.par_chunks_mut(m * n)
        .enumerate()
        .for_each(|(i, c)| gemm(a.matrix(i), b.matrix(i), Output::Bf16(c)));
}

/// Where [`gemm()`] writes `C`: a row-major `m × n` slice in bf16 (rounded once from the fp32
/// accumulator, as PyTorch's bf16 matmul does) or in fp32 (the accumulator itself).
#[derive(Debug)]
pub enum Output<'a> {
    /// Rounded to bf16.
    Bf16(&'a mut [bf16]),
    /// The fp32 accumulator.
    F32(&'a mut [f32]),
}

impl Output<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Bf16(c) => c.len(),
            Self::F32(c) => c.len(),
        }
    }
}

/// `C = A·B` on [`KernelPath::active`]: `a` is `m × k`, `b` is `k × n`, `c` holds `m·n`.
///
/// # Panics
/// When the inner dimensions differ or `c` does not hold `m·n` elements.
pub fn gemm(a: Matrix<'_, bf16>, b: Matrix<'_, bf16>, c: Output<'_>) {
    gemm_on(KernelPath::active(), a, b, c)
}

/// [`gemm()`] on the given path.
pub fn gemm_on(path: KernelPath, a: Matrix<'_, bf16>, b: Matrix<'_, bf16>, c: Output<'_>) {
    let ([m, k], [k_b, n]) = (a.dims(), b.dims());
    assert_eq!(k, k_b, "gemm: A is {m}×{k} but B is {k_b}×{n}");
    assert_eq!(c.len(), m * n, "gemm: C must hold {m}×{n} elements");
    if m == 0 || n == 0 {
        return;
    }
    if m == 1 {
        return row_times_matrix(a, b, c);
    }
    match (path, c) {
        (_, Output::Bf16(c)) if k == 0 => c.fill(bf16::ZERO),
        (_, Output::F32(c)) if k == 0 => c.fill(0.0),
        #[cfg(target_arch = "x86_64")]
        (KernelPath::Amx, c) => {
            let unit = || crate::amx::TileInstructions::new().expect("AMX checked by the path");
            crate::amx::gemm(unit, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        (KernelPath::Amx, _) => unreachable!("AMX is x86-64's"),
        (KernelPath::AmxModel, c) => crate::amx::gemm(crate::amx::TileModel::default, a, b, c),
        // No copies of the operands and no fp32 product: gemmkit packs bf16 panels (in pairs
        // along k for vdpbf16ps, widened to fp32 elsewhere) and rounds each register tile once.
        (KernelPath::Gemmkit, Output::Bf16(c)) => gemmkit::gemm(
            bf16::ONE,
            a.gemmkit(),
            b.gemmkit(),
            bf16::ZERO,
            MatMut::from_row_major(c, m, n),
            Parallelism::Rayon(0),
        ),
        // gemmkit's bf16 kernels store bf16 only; an fp32 result takes the widening path.
        (KernelPath::Gemmkit | KernelPath::Portable, Output::F32(c)) => widened_gemm(a, b, c),
        (KernelPath::Portable, Output::Bf16(c)) => {
            let mut accumulator = vec![0.0f32; m * n];
            widened_gemm(a, b, &mut accumulator);
            round_into(&accumulator, c);
        }
    }
}

/// Columns of `B` per parallel task of [`row_times_matrix`].
const COLUMNS_PER_TASK: usize = 256;

/// `c = a·b` for a single row `a` (`1 × k`): one fp32 dot product per column of `b`, the
/// columns spread over the cores. A generation step multiplies one row by every weight, and a
/// GEMM kernel would pack the whole of `b` (for the head, 50304 × d) for that one row.
fn row_times_matrix(a: Matrix<'_, bf16>, b: Matrix<'_, bf16>, c: Output<'_>) {
    let [_, k] = a.dims();
    let row: Vec<f32> = (0..k).map(|i| a.at(0, i).to_f32()).collect();
    // Column `j` of `b`: contiguous when `b` is a transposed `[n, k]` weight (row stride 1).
    let column_dot = |j: usize| -> f32 {
        if b.row_stride == 1 {
            dot(&row, &b.data[j * b.col_stride..][..k])
        } else {
            (0..k).map(|i| row[i] * b.at(i, j).to_f32()).sum()
        }
    };
    match c {
        Output::Bf16(c) => fill_columns(c, |j| bf16::from_f32(column_dot(j))),
        Output::F32(c) => fill_columns(c, column_dot),
    }
}

/// `out[j] = value(j)` for every column `j`, [`COLUMNS_PER_TASK`] columns per parallel task.
fn fill_columns<T: Send>(out: &mut [T], value: impl Fn(usize) -> T + Sync) {
    out.par_chunks_mut(COLUMNS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = task * COLUMNS_PER_TASK;
            for (offset, out) in chunk.iter_mut().enumerate() {
                *out = value(first + offset);
            }
        });
}

/// `Σ row[i]·column[i]` in fp32 over 16 interleaved partial sums (products of bf16 values are
/// exact in fp32; the lanes let the compiler vectorise).
fn dot(row: &[f32], column: &[bf16]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let (row_body, row_tail) = row.split_at(row.len() / LANES * LANES);
    let (column_body, column_tail) = column.split_at(row_body.len());
    for (r, c) in row_body
        .chunks_exact(LANES)
        .zip(column_body.chunks_exact(LANES))
    {
        for lane in 0..LANES {
            lanes[lane] += r[lane] * c[lane].to_f32();
        }
    }
    let tail: f32 = row_tail
        .iter()
        .zip(column_tail)
        .map(|(r, c)| r * c.to_f32())
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// brainfloat's own AVX512-BF16 kernel (`dot_bf16`), for comparison with gemmkit's.
#[cfg(feature = "own-gemm")]
///
/// # Panics
/// As [`gemm()`]; also when the CPU lacks AVX512-BF16.
pub fn gemm_own(a: Matrix<'_, bf16>, b: Matrix<'_, bf16>, c: Output<'_>) {
    let ([m, k], [k_b, n]) = (a.dims(), b.dims());
    assert_eq!(k, k_b, "gemm: A is {m}×{k} but B is {k_b}×{n}");
    assert_eq!(c.len(), m * n, "gemm: C must hold {m}×{n} elements");
    assert!(
        KernelPath::cpu_has_avx512_bf16(),
        "this CPU has no AVX512-BF16"
    );
    // SAFETY: the CPU has AVX512-BF16 (asserted, and it implies AVX-512 F); shapes checked.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        crate::dot_bf16::gemm(a, b, c)
    }
    // Elsewhere the assertion above has already refused.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (a, b, c);
}

/// Elements per parallel task of the elementwise passes: enough work to outweigh a task's cost.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// The portable product: both operands widened (exactly) to row-major fp32, then the `gemm`
/// crate's fp32 GEMM (flex's own fp32 kernel, which runs on any CPU).
fn widened_gemm(a: Matrix<'_, bf16>, b: Matrix<'_, bf16>, c: &mut [f32]) {
    let ([m, k], [_, n]) = (a.dims(), b.dims());
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let (a, b) = (widen(a), widen(b));
    fp32_gemm(&a, &b, c, [m, k, n]);
}

/// `c = a·b` for row-major fp32 `a` (m×k), `b` (k×n), `c` (m×n): the `gemm` crate's kernel
/// (flex's fp32 matmul), on every core above `PARALLEL_WORK`.
///
/// # Panics
/// When a slice's length is not its shape's.
pub fn fp32_gemm(a: &[f32], b: &[f32], c: &mut [f32], [m, k, n]: [usize; 3]) {
    assert!(
        a.len() == m * k && b.len() == k * n && c.len() == m * n,
        "fp32_gemm: slices of {}, {}, {} for {m}×{k}·{k}×{n}",
        a.len(),
        b.len(),
        c.len()
    );
    let parallelism = if m * n * k >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `a` is m×k and `b` is k×n, row-major and exactly that long; `c` holds m×n
    // (all asserted); `c` is a `&mut` and so overlaps neither.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Multiply-adds above which the portable GEMM uses every core (flex's threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// A strided bf16 matrix as a row-major fp32 copy, in parallel over blocks of rows. Rows that
/// are contiguous in memory convert as slices (a loop that vectorises); a transposed view reads
/// in column order within [`TILE`]-square tiles so that both sides stay in cache.
fn widen(matrix: Matrix<'_, bf16>) -> Vec<f32> {
    let [rows, cols] = matrix.dims();
    let mut out = vec![0.0f32; rows * cols];
    let rows_per_task = (ELEMENTS_PER_TASK / cols.max(1)).max(TILE);
    out.par_chunks_mut(rows_per_task * cols)
        .enumerate()
        .for_each(|(task, block)| {
            let first = task * rows_per_task;
            let block_rows = block.len() / cols;
            if matrix.col_stride == 1 {
                for (r, row) in block.chunks_mut(cols).enumerate() {
                    let start = (first + r) * matrix.row_stride;
                    for (dst, src) in row.iter_mut().zip(&matrix.data[start..start + cols]) {
                        *dst = src.to_f32();
                    }
                }
                return;
            }
            for col_tile in (0..cols).step_by(TILE) {
                for row_tile in (0..block_rows).step_by(TILE) {
                    for j in col_tile..(col_tile + TILE).min(cols) {
                        for r in row_tile..(row_tile + TILE).min(block_rows) {
                            block[r * cols + j] = matrix.at(first + r, j).to_f32();
                        }
                    }
                }
            }
        });
    out
}

/// Side of the square tiles of a transposing copy.
const TILE: usize = 32;

/// `dst[i] = bf16(src[i])`, rounded to nearest even.
fn round_into(src: &[f32], dst: &mut [bf16]) {
    dst.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(src.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(dst, src)| {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = <bf16 as Float>::from_f32(*s);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// `A·B` in float64 from the (exact) bf16 values.
    fn reference(a: Matrix<'_, bf16>, b: Matrix<'_, bf16>) -> Vec<f64> {
        let ([m, k], [_, n]) = (a.dims(), b.dims());
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a.at(i, p).to_f32() as f64 * b.at(p, j).to_f32() as f64)
                    .sum();
            }
        }
        c
    }

    fn norm(v: impl Iterator<Item = f64>) -> f64 {
        v.map(|x| x * x).sum::<f64>().sqrt()
    }

    const SIZES: [usize; 7] = [1, 3, 17, 64, 255, 256, 1000];

    /// Every combination of m, n, k from [`SIZES`] (bounded to keep the float64 reference fast),
    /// each operand stored plain or transposed, both outputs, each kernel: gemmkit's, the
    /// portable path, the AMX GEMM on the tiles' software model, and where the CPU has them the
    /// AMX instructions and brainfloat's own AVX512-BF16 kernel.
    #[test]
    fn matches_float64_on_ragged_shapes_transposed_operands_and_both_outputs() {
        let mut checked = 0;
        for &m in &SIZES {
            for &n in &SIZES {
                for &k in &SIZES {
                    if m * n * k > 64_000_000 {
                        continue;
                    }
                    let seed = (m * 1_000_003 + n * 1009 + k) as u64;
                    let (a_data, b_data) = (values(m * k, seed), values(k * n, seed + 1));
                    // Plain: A row-major m×k. Transposed: A stored k×m, viewed through its
                    // transpose. Alternate so every shape sees both layouts of each operand.
                    let transpose_a = (m + k) % 2 == 0;
                    let transpose_b = (n + k) % 2 == 1;
                    let a = if transpose_a {
                        Matrix::row_major(&a_data, k, m).transpose()
                    } else {
                        Matrix::row_major(&a_data, m, k)
                    };
                    let b = if transpose_b {
                        Matrix::row_major(&b_data, n, k).transpose()
                    } else {
                        Matrix::row_major(&b_data, k, n)
                    };
                    let want = reference(a, b);
                    let scale = norm(want.iter().copied()).max(f64::MIN_POSITIVE);
                    let own = (cfg!(feature = "own-gemm") && KernelPath::cpu_has_avx512_bf16())
                        .then_some("own");
                    let amx = KernelPath::cpu_has_amx().then_some("amx");
                    let kernels = [
                        Some("gemmkit"),
                        Some("portable"),
                        Some("amx-model"),
                        amx,
                        own,
                    ];
                    for kernel in kernels.into_iter().flatten() {
                        let run = |c: Output<'_>| match kernel {
                            "gemmkit" => gemm_on(KernelPath::Gemmkit, a, b, c),
                            "portable" => gemm_on(KernelPath::Portable, a, b, c),
                            "amx-model" => gemm_on(KernelPath::AmxModel, a, b, c),
                            "amx" => gemm_on(KernelPath::Amx, a, b, c),
                            #[cfg(feature = "own-gemm")]
                            "own" => gemm_own(a, b, c),
                            _ => unreachable!("no kernel {kernel}"),
                        };
                        let path = kernel;
                        let mut fp32 = vec![f32::NAN; m * n];
                        run(Output::F32(&mut fp32));
                        let error = norm(fp32.iter().zip(&want).map(|(g, w)| *g as f64 - w));
                        // fp32 accumulation over k terms: a few ulp of the result's norm.
                        assert!(
                            error <= 1e-5 * scale,
                            "{path} fp32 {m}×{k}·{k}×{n}: {:e}",
                            error / scale
                        );
                        let mut rounded = vec![bf16::NAN; m * n];
                        run(Output::Bf16(&mut rounded));
                        for (i, (got, w)) in rounded.iter().zip(&want).enumerate() {
                            // One rounding to bf16 (half an ulp: at most 2⁻⁸ relative) of a value
                            // accurate to fp32.
                            let bound = w.abs() * 2f64.powi(-8) + 1e-5 * scale;
                            assert!(
                                (got.to_f32() as f64 - w).abs() <= bound,
                                "{path} bf16 {m}×{k}·{k}×{n} [{i}]: {got} vs {w}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 300, "{checked} shapes");
    }

    #[test]
    fn both_paths_round_the_same_accumulator_alike() {
        // With k = 1 each product is exact in fp32, so both paths must give the same bits.
        let (m, n) = (37, 70);
        let (a, b) = (values(m, 5), values(n, 6));
        let mut outputs = [KernelPath::Gemmkit, KernelPath::Portable].map(|path| {
            let mut c = vec![bf16::ZERO; m * n];
            gemm_on(
                path,
                Matrix::row_major(&a, m, 1),
                Matrix::row_major(&b, 1, n),
                Output::Bf16(&mut c),
            );
            c
        });
        let portable = outputs[1].clone();
        assert_eq!(std::mem::take(&mut outputs[0]), portable);
    }

    /// The same product gives the same bits whatever runs alongside it: products on other
    /// threads at once, and products nested in rayon's tasks (as the batched GEMM and the
    /// test harness's threads run them). A training run resumed from a checkpoint must retrace
    /// the uninterrupted one bit for bit.
    #[test]
    fn products_are_reproducible_under_concurrent_and_nested_calls() {
        // The test model's products (128 tokens, width 64, 4 heads of 16, vocabulary 512,
        // Newton–Schulz on 64×64 and 64×256), each operand plain or transposed.
        let shapes = [
            (128, 64, 64),
            (128, 64, 256),
            (128, 256, 64),
            (128, 64, 512),
            (128, 512, 64),
            (512, 128, 64),
            (64, 128, 256),
            (32, 16, 32),
            (32, 32, 16),
            (64, 256, 64),
            (64, 64, 64),
        ];
        let operands: Vec<_> = shapes
            .iter()
            .enumerate()
            .flat_map(|(i, &(m, k, n))| {
                let (a, b) = (values(m * k, 2 * i as u64), values(k * n, 2 * i as u64 + 1));
                [(false, false), (true, false), (false, true), (true, true)]
                    .map(|layout| (m, k, n, layout, a.clone(), b.clone()))
            })
            .collect();
        type Operands = (usize, usize, usize, (bool, bool), Vec<bf16>, Vec<bf16>);
        let product = |(m, k, n, (ta, tb), a, b): &Operands| {
            let a = if *ta {
                Matrix::row_major(a, *k, *m).transpose()
            } else {
                Matrix::row_major(a, *m, *k)
            };
            let b = if *tb {
                Matrix::row_major(b, *n, *k).transpose()
            } else {
                Matrix::row_major(b, *k, *n)
            };
            let mut c = vec![bf16::ZERO; m * n];
            gemm(a, b, Output::Bf16(&mut c));
            c
        };
        let alone: Vec<Vec<bf16>> = operands.iter().map(product).collect();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (operands, alone) = (&operands, &alone);
                scope.spawn(move || {
                    for round in 0..40 {
                        let nested: Vec<Vec<bf16>> = operands.par_iter().map(product).collect();
                        for ((got, want), (m, k, n, layout, ..)) in
                            nested.iter().zip(alone).zip(operands)
                        {
                            assert!(
                                got == want,
                                "thread {thread} round {round}: {m}×{k}×{n}, transposed {layout:?}"
                            );
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        let mut c = vec![bf16::ONE; 6];
        gemm(
            Matrix::row_major(&[], 2, 0),
            Matrix::row_major(&[], 0, 3),
            Output::Bf16(&mut c),
        );
        assert!(c.iter().all(|v| *v == bf16::ZERO));
        let mut c = vec![1.0f32; 6];
        gemm(
            Matrix::row_major(&[], 2, 0),
            Matrix::row_major(&[], 0, 3),
            Output::F32(&mut c),
        );
        assert_eq!(c, [0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "gemm: A is 2×3 but B is 2×2")]
    fn mismatched_inner_dimensions_are_refused() {
        let data = [bf16::ONE; 6];
        let mut c = [bf16::ZERO; 4];
        gemm(
            Matrix::row_major(&data, 2, 3),
            Matrix::row_major(&data[..4], 2, 2),
            Output::Bf16(&mut c),
        );
    }

    #[test]
    #[should_panic(expected = "reaches element")]
    fn a_view_outside_its_slice_is_refused() {
        Matrix::new(&[bf16::ONE; 4], 2, 3, 3, 1);
    }
}
