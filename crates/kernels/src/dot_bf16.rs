//! brainfloat's own AVX512-BF16 GEMM: `vdpbf16ps` multiplies pairs of bf16 along k into fp32
//! accumulators, 16 columns per register.
//!
//! Blocking, BLIS style: the output is cut into [`MC`]×[`NC`] tiles, one parallel task each;
//! a task walks k in [`KC`] steps, packs its A rows and B columns for that step (pairs along
//! k, zero-padded to whole micro-tiles) and runs the [`MR`]×[`NR`] micro-kernel over them,
//! accumulating in an fp32 tile buffer that is rounded to the output once at the end.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::{
    __m512, __m512bh, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

use half::bf16;
use rayon::prelude::*;

use crate::elem::Float;
use crate::gemm::{Matrix, Output};

/// Rows of a micro-tile: 12 rows × 2 registers = 24 accumulators of the 32 zmm registers.
const MR: usize = 12;
/// Columns of a micro-tile: two registers of 16 fp32 lanes.
const NR: usize = 32;
/// Rows of a task's tile (a multiple of `MR`).
const MC: usize = 8 * MR;
/// Columns of a task's tile (a multiple of `NR`).
const NC: usize = 8 * NR;
/// Depth of one packing step (even): B's micro-panel, `KC × NR` bf16, is 16 KiB (L1).
const KC: usize = 256;

/// `C = A·B` with `vdpbf16ps`.
///
/// # Safety
/// The CPU must support AVX-512 F and BF16. The views and `c` must be consistent (checked by
/// [`crate::gemm`]'s entry point: `a` is m×k, `b` is k×n, `c` holds m·n).
pub unsafe fn gemm(a: Matrix<'_, bf16>, b: Matrix<'_, bf16>, c: Output<'_>) {
    let ([m, k], [_, n]) = (a.dims(), b.dims());
    let tiles_m = m.div_ceil(MC);
    let tiles = tiles_m * n.div_ceil(NC);
    // Each task writes a disjoint tile of C; the output pointer travels as an address.
    let (address, is_bf16) = match c {
        Output::Bf16(c) => (c.as_mut_ptr() as usize, true),
        Output::F32(c) => (c.as_mut_ptr() as usize, false),
    };
    (0..tiles).into_par_iter().for_each(|tile| {
        let (row0, col0) = ((tile % tiles_m) * MC, (tile / tiles_m) * NC);
        let (rows, cols) = (MC.min(m - row0), NC.min(n - col0));
        let mut acc = vec![0.0f32; MC * NC];
        // SAFETY: the CPU has the features (caller), and the tile lies inside A, B and C.
        unsafe { tile_product(a, b, k, row0, col0, rows, cols, &mut acc) };
        for r in 0..rows {
            let source = &acc[r * NC..r * NC + cols];
            let offset = (row0 + r) * n + col0;
            // SAFETY: rows row0..row0+rows and columns col0..col0+cols of the m×n output are
            // inside it and written by this task only (tiles do not overlap).
            unsafe {
                if is_bf16 {
                    let out =
                        std::slice::from_raw_parts_mut((address as *mut bf16).add(offset), cols);
                    for (o, v) in out.iter_mut().zip(source) {
                        *o = <bf16 as Float>::from_f32(*v);
                    }
                } else {
                    let out =
                        std::slice::from_raw_parts_mut((address as *mut f32).add(offset), cols);
                    out.copy_from_slice(source);
                }
            }
        }
    });
}

/// One task's `rows × cols` tile at (`row0`, `col0`), summed over all of k into `acc`
/// (row stride [`NC`]).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_product(
    a: Matrix<'_, bf16>,
    b: Matrix<'_, bf16>,
    k: usize,
    row0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
    acc: &mut [f32],
) {
    let (row_panels, col_panels) = (rows.div_ceil(MR), cols.div_ceil(NR));
    let mut packed_a = vec![0u32; row_panels * MR * KC / 2];
    let mut packed_b = vec![0u32; col_panels * NR * KC / 2];
    let mut micro = [0.0f32; MR * NR];
    for k0 in (0..k).step_by(KC) {
        let depth = KC.min(k - k0);
        let pairs = depth.div_ceil(2);
        pack_a(a, row0, rows, k0, depth, &mut packed_a);
        pack_b(b, col0, cols, k0, depth, &mut packed_b);
        for cp in 0..col_panels {
            for rp in 0..row_panels {
                let a_panel = &packed_a[rp * MR * KC / 2..];
                let b_panel = &packed_b[cp * NR * KC / 2..];
                let (r0, c0) = (rp * MR, cp * NR);
                let (mr, nr) = (MR.min(rows - r0), NR.min(cols - c0));
                if k0 > 0 {
                    for r in 0..mr {
                        micro[r * NR..r * NR + nr]
                            .copy_from_slice(&acc[(r0 + r) * NC + c0..][..nr]);
                    }
                }
                // SAFETY: the panels hold `pairs` pairs of MR rows and NR columns.
                unsafe { micro_kernel(pairs, a_panel, b_panel, &mut micro, k0 > 0) };
                for r in 0..mr {
                    acc[(r0 + r) * NC + c0..][..nr].copy_from_slice(&micro[r * NR..r * NR + nr]);
                }
            }
        }
    }
}

/// A's rows `row0..row0+rows`, columns `k0..k0+depth`, as panels of [`MR`] rows: for each pair
/// of columns, the MR rows' two values as one `u32` (low half the even column); zero padding.
fn pack_a(a: Matrix<'_, bf16>, row0: usize, rows: usize, k0: usize, depth: usize, out: &mut [u32]) {
    let pairs = depth.div_ceil(2);
    for rp in 0..rows.div_ceil(MR) {
        let panel = &mut out[rp * MR * KC / 2..][..pairs * MR];
        for r in 0..MR {
            let row = rp * MR + r;
            for p in 0..pairs {
                let value = |j: usize| {
                    if row < rows && j < depth {
                        a.at(row0 + row, k0 + j).to_bits() as u32
                    } else {
                        0
                    }
                };
                panel[p * MR + r] = value(2 * p) | (value(2 * p + 1) << 16);
            }
        }
    }
}

/// B's columns `col0..col0+cols`, rows `k0..k0+depth`, as panels of [`NR`] columns: for each
/// pair of rows, each column's two values as one `u32`; zero padding.
fn pack_b(b: Matrix<'_, bf16>, col0: usize, cols: usize, k0: usize, depth: usize, out: &mut [u32]) {
    let pairs = depth.div_ceil(2);
    for cp in 0..cols.div_ceil(NR) {
        let panel = &mut out[cp * NR * KC / 2..][..pairs * NR];
        for p in 0..pairs {
            for c in 0..NR {
                let col = cp * NR + c;
                let value = |j: usize| {
                    if col < cols && j < depth {
                        b.at(k0 + j, col0 + col).to_bits() as u32
                    } else {
                        0
                    }
                };
                panel[p * NR + c] = value(2 * p) | (value(2 * p + 1) << 16);
            }
        }
    }
}

/// `micro (+)= A_panel · B_panel` over `pairs` pairs of k: [`MR`]×[`NR`] fp32 accumulators in
/// registers, one `vdpbf16ps` per row and register per pair.
///
/// # Safety
/// The CPU must support AVX-512 F and BF16; `a` holds `pairs·MR` and `b` `pairs·NR` values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_kernel(pairs: usize, a: &[u32], b: &[u32], micro: &mut [f32; MR * NR], load: bool) {
    assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if load {
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: micro holds MR·NR fp32; each load reads 16 of row r.
            unsafe {
                row[0] = _mm512_loadu_ps(micro.as_ptr().add(r * NR));
                row[1] = _mm512_loadu_ps(micro.as_ptr().add(r * NR + 16));
            }
        }
    }
    for p in 0..pairs {
        // SAFETY: b holds pairs·NR u32 (asserted): 32 per pair, two registers of 16.
        let (b0, b1): (__m512bh, __m512bh) = unsafe {
            let base = b.as_ptr().add(p * NR) as *const f32;
            (
                std::mem::transmute::<__m512, __m512bh>(_mm512_loadu_ps(base)),
                std::mem::transmute::<__m512, __m512bh>(_mm512_loadu_ps(base.add(16))),
            )
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: a holds pairs·MR u32 (asserted).
            let pair = unsafe { *a.get_unchecked(p * MR + r) };
            // SAFETY: a bit-for-bit reinterpretation between 512-bit vector types.
            let a_pair: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair as i32)) };
            row[0] = _mm512_dpbf16_ps(row[0], a_pair, b0);
            row[1] = _mm512_dpbf16_ps(row[1], a_pair, b1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: micro holds MR·NR fp32; each store writes 16 of row r.
        unsafe {
            _mm512_storeu_ps(micro.as_mut_ptr().add(r * NR), row[0]);
            _mm512_storeu_ps(micro.as_mut_ptr().add(r * NR + 16), row[1]);
        }
    }
}
