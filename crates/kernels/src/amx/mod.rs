//! The bf16 GEMM on Intel AMX's tiles, written once over a [`TileUnit`]: the state the GEMM
//! needs (configure, load, `TDPBF16PS`, store, release), with two implementations — the
//! instructions themselves ([`TileInstructions`], where the CPU and the OS allow them) and a
//! software model of them ([`TileModel`], on every CPU), so that every test of the GEMM runs on
//! any machine and an AMX machine compares the two.
//!
//! The GEMM packs `A` into rows of 16 × 32 bf16 tiles and `B` once into the pair-interleaved
//! layout `TDPBF16PS` reads (row `r` of a B tile holds, for each of its 16 columns `j`, the pair
//! `B[2r][j], B[2r+1][j]`), both zero-padded to whole tiles, and computes each 32 × 32 block of
//! `C` in four fp32 accumulator tiles (2 A tiles × 2 B tiles per step of 32 along `k`). Row blocks
//! run in parallel; each task configures its core's tiles and releases them.

#[cfg(target_arch = "x86_64")]
mod instructions;
mod model;

use half::bf16;
use rayon::prelude::*;

use crate::elem::Float;
use crate::gemm::{Matrix, Output};

#[cfg(target_arch = "x86_64")]
pub use instructions::{TileInstructions, available};
pub use model::TileModel;

/// Rows of a tile (palette 1's maximum), and so rows of an A tile and k-pairs of a B tile.
pub const TILE_ROWS: usize = 16;
/// bf16 values in a row of an A tile (64 bytes): the `k` one step covers.
pub const TILE_K: usize = 32;
/// fp32 columns of an accumulator tile, and output columns of a B tile.
pub const TILE_COLUMNS: usize = 16;

/// The four fp32 accumulator tiles of a 32 × 32 block of `C` (`tmm0`–`tmm3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulator {
    /// Rows 0–15, columns 0–15 (`tmm0`).
    C00 = 0,
    /// Rows 0–15, columns 16–31 (`tmm1`).
    C01 = 1,
    /// Rows 16–31, columns 0–15 (`tmm2`).
    C10 = 2,
    /// Rows 16–31, columns 16–31 (`tmm3`).
    C11 = 3,
}

/// The two A tiles (`tmm4`, `tmm5`): 16 rows × 32 bf16 each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ATile {
    /// `tmm4`.
    A0 = 4,
    /// `tmm5`.
    A1 = 5,
}

/// The two B tiles (`tmm6`, `tmm7`): 16 k-pairs × 16 columns each, pair-interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BTile {
    /// `tmm6`.
    B0 = 6,
    /// `tmm7`.
    B1 = 7,
}

/// The AMX state the GEMM needs. Tile registers are fixed by role (the instructions name them
/// literally): four accumulators, two A tiles, two B tiles, each 16 rows × 64 bytes (palette 1).
/// Loads and stores take a slice and a row stride in elements; each checks that every row it
/// touches lies inside the slice.
pub trait TileUnit {
    /// Configures palette 1 with every tile 16 rows × 64 bytes (`LDTILECFG`).
    fn configure(&mut self);
    /// Zeroes an accumulator (`TILEZERO`).
    fn zero(&mut self, c: Accumulator);
    /// Loads 16 rows of 32 bf16 (`TILELOADD`), row `r` from `src[r·stride..]`.
    fn load_a(&mut self, a: ATile, src: &[bf16], stride: usize);
    /// Loads 16 rows of 16 pairs of bf16 (`TILELOADD`), row `r` from `src[r·stride..]`.
    fn load_b(&mut self, b: BTile, src: &[bf16], stride: usize);
    /// `c += a · b` over bf16 pairs into fp32 (`TDPBF16PS`).
    fn dot_bf16(&mut self, c: Accumulator, a: ATile, b: BTile);
    /// Stores 16 rows of 16 fp32 (`TILESTORED`), row `r` to `dst[r·stride..]`.
    fn store(&mut self, c: Accumulator, dst: &mut [f32], stride: usize);
    /// Releases the tile state (`TILERELEASE`).
    fn release(&mut self);
}

/// Panics unless 16 rows of `row_len` elements at `stride` lie inside a slice of `len`.
#[inline(always)]
pub(crate) fn check_rows(len: usize, stride: usize, row_len: usize) {
    assert!(
        stride >= row_len && (TILE_ROWS - 1) * stride + row_len <= len,
        "a tile of {TILE_ROWS} rows of {row_len} at stride {stride} outside a slice of {len}"
    );
}

/// `x` rounded up to a multiple of `to`.
fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// `A` (`m × k`) as row-major rows of `k_padded` bf16, `m_padded` of them, zero-padded.
fn pack_a(a: Matrix<'_, bf16>, m_padded: usize, k_padded: usize) -> Vec<bf16> {
    let [m, k] = a.dims();
    let mut packed = vec![bf16::ZERO; m_padded * k_padded];
    packed
        .par_chunks_mut(k_padded)
        .take(m)
        .enumerate()
        .for_each(|(i, row)| {
            for (p, value) in row[..k].iter_mut().enumerate() {
                *value = a.at(i, p);
            }
        });
    packed
}

/// `B` (`k × n`) in B tiles' layout: for each group of 16 columns, `k_padded / 2` rows of 16
/// pairs `B[2r][j], B[2r+1][j]` (32 bf16 per row), groups one after the other, zero-padded.
fn pack_b(b: Matrix<'_, bf16>, n_padded: usize, k_padded: usize) -> Vec<bf16> {
    let [k, n] = b.dims();
    let group_len = k_padded / 2 * 2 * TILE_COLUMNS;
    let mut packed = vec![bf16::ZERO; n_padded / TILE_COLUMNS * group_len];
    packed
        .par_chunks_mut(group_len)
        .enumerate()
        .for_each(|(group, panel)| {
            for (r, row) in panel.chunks_mut(2 * TILE_COLUMNS).enumerate() {
                for (j, pair) in row.chunks_mut(2).enumerate() {
                    let column = group * TILE_COLUMNS + j;
                    if column >= n {
                        break;
                    }
                    for (t, value) in pair.iter_mut().enumerate() {
                        if 2 * r + t < k {
                            *value = b.at(2 * r + t, column);
                        }
                    }
                }
            }
        });
    packed
}

/// Rows and columns of `C` one task computes: a block of two accumulator tiles each way.
const BLOCK: usize = 2 * TILE_ROWS;

/// `C = A·B` on tile units that `unit` makes (one per parallel task): bf16 operands of any
/// strides, an fp32 accumulator, `C` rounded once to bf16 or stored in fp32. Shapes are
/// checked by the caller (`gemm_on`); `k > 0`.
pub(crate) fn gemm<U: TileUnit>(
    unit: impl Fn() -> U + Sync,
    a: Matrix<'_, bf16>,
    b: Matrix<'_, bf16>,
    c: Output<'_>,
) {
    let ([m, k], [_, n]) = (a.dims(), b.dims());
    let (m_padded, n_padded, k_padded) =
        (round_up(m, BLOCK), round_up(n, BLOCK), round_up(k, TILE_K));
    let (a, b) = (pack_a(a, m_padded, k_padded), pack_b(b, n_padded, k_padded));
    let group_len = k_padded * TILE_COLUMNS;
    // One row block of C: every column block, each a 32 × 32 block of four accumulators.
    let row_block = |block: usize, write: &mut dyn FnMut(usize, &[f32; BLOCK * BLOCK])| {
        let mut unit = unit();
        unit.configure();
        let mut out = [0.0f32; BLOCK * BLOCK];
        let rows = |half: usize| &a[(block * BLOCK + half * TILE_ROWS) * k_padded..];
        for column_block in 0..n_padded / BLOCK {
            for c in [
                Accumulator::C00,
                Accumulator::C01,
                Accumulator::C10,
                Accumulator::C11,
            ] {
                unit.zero(c);
            }
            let group = |half: usize| &b[(2 * column_block + half) * group_len..];
            for step in 0..k_padded / TILE_K {
                unit.load_a(ATile::A0, &rows(0)[step * TILE_K..], k_padded);
                unit.load_a(ATile::A1, &rows(1)[step * TILE_K..], k_padded);
                let pairs = step * TILE_ROWS * 2 * TILE_COLUMNS;
                unit.load_b(BTile::B0, &group(0)[pairs..], 2 * TILE_COLUMNS);
                unit.load_b(BTile::B1, &group(1)[pairs..], 2 * TILE_COLUMNS);
                unit.dot_bf16(Accumulator::C00, ATile::A0, BTile::B0);
                unit.dot_bf16(Accumulator::C01, ATile::A0, BTile::B1);
                unit.dot_bf16(Accumulator::C10, ATile::A1, BTile::B0);
                unit.dot_bf16(Accumulator::C11, ATile::A1, BTile::B1);
            }
            unit.store(Accumulator::C00, &mut out, BLOCK);
            unit.store(Accumulator::C01, &mut out[TILE_COLUMNS..], BLOCK);
            unit.store(Accumulator::C10, &mut out[TILE_ROWS * BLOCK..], BLOCK);
            unit.store(
                Accumulator::C11,
                &mut out[TILE_ROWS * BLOCK + TILE_COLUMNS..],
                BLOCK,
            );
            write(column_block, &out);
        }
        unit.release();
    };
    match c {
        Output::Bf16(c) => write_blocks(c, m, n, row_block),
        Output::F32(c) => write_blocks(c, m, n, row_block),
    }
}

/// Runs `row_block` for every block of 32 rows of the row-major `m × n` `c` in parallel,
/// writing what it hands out (a 32 × 32 fp32 block per column block) into `c`'s rows and
/// columns that exist, rounded to `c`'s element type.
fn write_blocks<T: Float + Send>(
    c: &mut [T],
    m: usize,
    n: usize,
    row_block: impl Fn(usize, &mut dyn FnMut(usize, &[f32; BLOCK * BLOCK])) + Sync,
) {
    c.par_chunks_mut(BLOCK * n)
        .enumerate()
        .for_each(|(block, rows)| {
            let height = (m - block * BLOCK).min(BLOCK);
            row_block(block, &mut |column_block, out| {
                let first = column_block * BLOCK;
                let width = n.saturating_sub(first).min(BLOCK);
                for r in 0..height {
                    let dst = &mut rows[r * n + first..][..width];
                    for (d, s) in dst.iter_mut().zip(&out[r * BLOCK..]) {
                        *d = T::from_f32(*s);
                    }
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::model::tdpbf16ps;
    use super::*;

    /// The real `TDPBF16PS`'s inputs and outputs (29 cases, made on an AMX Xeon by
    /// `../shared/reference/amx/generator`; `tests/data/README.md` gives the layout).
    const CASES: &[u8] = include_bytes!("../../tests/data/tdpbf16ps_cases.bin");

    struct Case {
        name: String,
        reps: usize,
        c: Vec<f32>,
        a: Vec<u16>,
        b: Vec<u16>,
        out: Vec<f32>,
    }

    fn cases() -> Vec<Case> {
        assert_eq!(&CASES[..9], b"TDPBF16PS");
        let count = u32::from_le_bytes(CASES[16..20].try_into().unwrap()) as usize;
        let mut at = 20;
        let mut take = |n: usize| {
            let bytes = &CASES[at..at + n];
            at += n;
            bytes
        };
        let words = |bytes: &[u8]| -> Vec<u32> {
            bytes
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
                .collect()
        };
        let halves = |bytes: &[u8]| -> Vec<u16> {
            bytes
                .chunks_exact(2)
                .map(|w| u16::from_le_bytes(w.try_into().unwrap()))
                .collect()
        };
        let cases: Vec<Case> = (0..count)
            .map(|_| {
                let name = String::from_utf8_lossy(take(16))
                    .trim_end_matches('\0')
                    .to_string();
                let reps = words(take(4))[0] as usize;
                let c = words(take(1024)).into_iter().map(f32::from_bits).collect();
                let (a, b) = (halves(take(1024)), halves(take(1024)));
                let out = words(take(1024)).into_iter().map(f32::from_bits).collect();
                Case {
                    name,
                    reps,
                    c,
                    a,
                    b,
                    out,
                }
            })
            .collect();
        assert_eq!(at, CASES.len(), "the whole file read");
        cases
    }

    /// Output `(m, n)` of `reps` instructions of the model on a case, and the sum of the
    /// magnitudes it adds up (`|C|` and each pair's), the scale of its roundings.
    fn model(case: &Case, m: usize, n: usize) -> (f32, f64) {
        let pairs: [[u16; 4]; TILE_ROWS] = std::array::from_fn(|k| {
            let (a, b) = (&case.a[m * 32 + 2 * k..], &case.b[k * 32 + 2 * n..]);
            [a[0], b[0], a[1], b[1]]
        });
        let mut c = case.c[m * 16 + n];
        let mut magnitude = 0.0f64;
        for _ in 0..case.reps {
            let bf = |bits: u16| f32::from_bits((bits as u32) << 16) as f64;
            magnitude += c.abs() as f64
                + (pairs
                    .iter()
                    .map(|[a0, b0, a1, b1]| (bf(*a0) * bf(*b0) + bf(*a1) * bf(*b1)).abs()))
                .sum::<f64>();
            c = tdpbf16ps(c, &pairs);
        }
        (c, magnitude)
    }

    /// The model against the hardware's outputs: the same class of value (NaN, ±∞, zero,
    /// finite) everywhere but where the hardware keeps products beyond fp32's range
    /// (`overflow`), finite values within a few roundings of the magnitudes summed, and how many
    /// outputs agree bit for bit.
    #[test]
    fn the_model_is_the_hardware_within_the_roundings_of_its_partial_sums() {
        let (mut same, mut total, mut worst) = (0, 0, 0.0f64);
        for case in cases() {
            let mut case_same = 0;
            for m in 0..16 {
                for n in 0..16 {
                    let (got, magnitude) = model(&case, m, n);
                    let want = case.out[m * 16 + n];
                    total += 1;
                    if got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()) {
                        same += 1;
                        case_same += 1;
                        continue;
                    }
                    if case.name == "overflow" {
                        // Products of 1e30·1e30: the hardware sums them beyond fp32's range and
                        // gives ±∞ (or NaN); this model's pair sums overflow first.
                        assert!(
                            !got.is_finite() && !want.is_finite(),
                            "overflow ({m}, {n}): {got} vs {want}"
                        );
                        continue;
                    }
                    assert!(
                        got.is_finite() && want.is_finite(),
                        "{} ({m}, {n}): {got} where the hardware gives {want}",
                        case.name
                    );
                    // One rounding of a partial sum is at most 2⁻²⁴ of its magnitude, which the
                    // sum of the magnitudes bounds; fp32's smallest normal where the hardware
                    // flushes partial sums (`denormal-c`, `underflow`).
                    let error = (got as f64 - want as f64).abs();
                    let ulps = error / (magnitude * 2f64.powi(-24)).max(f32::MIN_POSITIVE as f64);
                    worst = worst.max(ulps);
                    assert!(
                        ulps <= 8.0,
                        "{} ({m}, {n}): {got} vs {want}, {ulps:.1} roundings",
                        case.name
                    );
                }
            }
            println!(
                "{:14} reps {}: {case_same} of 256 bit for bit",
                case.name, case.reps
            );
        }
        println!("{same} of {total} outputs bit for bit; the others within {worst:.2} roundings");
        assert!(same * 10 >= total * 8, "{same} of {total} bit for bit");
    }

    /// A deterministic bf16 spread in about ±2.
    fn values(len: usize, seed: usize) -> Vec<bf16> {
        (0..len)
            .map(|i| bf16::from_f32(((i * 7919 + seed * 104_729) % 1009) as f32 / 252.0 - 2.0))
            .collect()
    }

    /// `A·B` in float64 and `|A|·|B|` (the scale of its roundings) for row-major operands.
    fn reference(a: &[bf16], b: &[bf16], [m, k, n]: [usize; 3]) -> (Vec<f64>, Vec<f64>) {
        let (mut c, mut magnitude) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for p in 0..k {
                let x = a[i * k + p].to_f64();
                for j in 0..n {
                    let product = x * b[p * n + j].to_f64();
                    c[i * n + j] += product;
                    magnitude[i * n + j] += product.abs();
                }
            }
        }
        (c, magnitude)
    }

    /// How far an fp32 dot product of `k` terms whose magnitudes sum to `magnitude` may be from
    /// the exact one here: its worst case is `(k + 1)·2⁻²⁴·magnitude` (k/2 pair sums and as many
    /// additions, each within 2⁻²⁴ of what it adds up); on random operands the model's GEMM
    /// comes within 0.009 of that (the `small` products below), so the bound is 0.04 of it.
    fn fp32_bound(k: usize, magnitude: f64) -> f64 {
        0.04 * (k as f64 + 1.0) * 2f64.powi(-24) * magnitude
    }

    /// The 12 products of `configs/small.toml` (width 256, MLP 1024, vocabulary 50304) each way,
    /// with 64 tokens where the model has 2048, through the AMX GEMM on the tiles' model against
    /// float64: fp32 output within the roundings of an fp32 dot product, bf16 output one rounding
    /// further.
    #[test]
    fn the_small_models_products_on_the_tile_model_match_float64() {
        let (tokens, d, hidden, vocab) = (64, 256, 1024, 50304);
        let products = [
            ("attn d×d forward", [tokens, d, d]),
            ("attn d×d grad-input", [tokens, d, d]),
            ("attn d×d grad-weight", [d, tokens, d]),
            ("mlp.c_fc forward", [tokens, d, hidden]),
            ("mlp.c_fc grad-input", [tokens, hidden, d]),
            ("mlp.c_fc grad-weight", [hidden, tokens, d]),
            ("mlp.c_proj forward", [tokens, hidden, d]),
            ("mlp.c_proj grad-input", [tokens, d, hidden]),
            ("mlp.c_proj grad-weight", [d, tokens, hidden]),
            ("lm_head forward", [tokens, d, vocab]),
            ("lm_head grad-input", [tokens, vocab, d]),
            ("lm_head grad-weight", [vocab, tokens, d]),
        ];
        for (i, (name, [m, k, n])) in products.into_iter().enumerate() {
            let (a, b) = (values(m * k, 2 * i), values(k * n, 2 * i + 1));
            let (want, magnitude) = reference(&a, &b, [m, k, n]);
            let (a, b) = (Matrix::row_major(&a, m, k), Matrix::row_major(&b, k, n));
            let mut fp32 = vec![f32::NAN; m * n];
            crate::gemm_on(crate::KernelPath::AmxModel, a, b, Output::F32(&mut fp32));
            let mut rounded = vec![bf16::NAN; m * n];
            crate::gemm_on(
                crate::KernelPath::AmxModel,
                a,
                b,
                Output::Bf16(&mut rounded),
            );
            let mut worst = 0.0f64;
            for j in 0..m * n {
                let bound = fp32_bound(k, magnitude[j]);
                let error = (fp32[j] as f64 - want[j]).abs();
                worst = worst.max(error / bound.max(f64::MIN_POSITIVE));
                assert!(
                    error <= bound,
                    "{name} fp32 [{j}]: {} vs {}",
                    fp32[j],
                    want[j]
                );
                let error = (rounded[j].to_f64() - want[j]).abs();
                assert!(
                    error <= bound + want[j].abs() * 2f64.powi(-8),
                    "{name} bf16 [{j}]: {} vs {}",
                    rounded[j],
                    want[j]
                );
            }
            println!("{name} {m}×{k}×{n}: worst fp32 error {worst:.3} of its bound");
        }
    }

    /// On a CPU with AMX-BF16, the instructions and the model give the same products on the
    /// GEMM's ragged shapes, bit for bit where the pair order does not matter (`k` ≤ 2) and
    /// within the model's bound elsewhere; skipped, and said so, where the CPU has none.
    #[test]
    fn the_instructions_agree_with_the_model() {
        if !crate::KernelPath::cpu_has_amx() {
            println!(
                "skipped: this CPU or OS does not run AMX-BF16; the instructions are compared \
                 with the model where it does"
            );
            return;
        }
        for [m, k, n] in [
            [1, 1, 1],
            [17, 2, 33],
            [64, 255, 65],
            [100, 1000, 48],
            [33, 64, 256],
        ] {
            let (a, b) = (values(m * k, m), values(k * n, n));
            let (want, magnitude) = reference(&a, &b, [m, k, n]);
            let (a, b) = (Matrix::row_major(&a, m, k), Matrix::row_major(&b, k, n));
            let [mut hardware, mut model] = [(); 2].map(|_| vec![f32::NAN; m * n]);
            crate::gemm_on(crate::KernelPath::Amx, a, b, Output::F32(&mut hardware));
            crate::gemm_on(crate::KernelPath::AmxModel, a, b, Output::F32(&mut model));
            let same = hardware.iter().zip(&model).filter(|(h, m)| h == m).count();
            println!("{m}×{k}×{n}: {same} of {} bit for bit", m * n);
            for j in 0..m * n {
                let bound = fp32_bound(k, magnitude[j]);
                if k <= 2 {
                    assert_eq!(
                        hardware[j].to_bits(),
                        model[j].to_bits(),
                        "{m}×{k}×{n} [{j}]"
                    );
                }
                assert!(
                    (hardware[j] as f64 - want[j]).abs() <= bound,
                    "{m}×{k}×{n} [{j}]"
                );
                assert!((hardware[j] as f64 - model[j] as f64).abs() <= 2.0 * bound);
            }
        }
    }
}
