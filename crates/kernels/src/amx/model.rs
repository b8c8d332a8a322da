//! A software model of the AMX tile unit, on every CPU: eight tiles of 16 rows × 64 bytes and
//! `TDPBF16PS` as this model computes it ([`tdpbf16ps`]).

use half::bf16;

use super::{ATile, Accumulator, BTile, TILE_COLUMNS, TILE_K, TILE_ROWS, TileUnit, check_rows};

/// Eight tiles of 16 rows × 16 words (64 bytes), as bits, and whether they are configured.
#[derive(Debug, Clone)]
pub struct TileModel {
    tiles: [[[u32; TILE_COLUMNS]; TILE_ROWS]; 8],
    configured: bool,
}

impl Default for TileModel {
    fn default() -> Self {
        Self {
            tiles: [[[0; TILE_COLUMNS]; TILE_ROWS]; 8],
            configured: false,
        }
    }
}

impl TileModel {
    fn tile(&mut self, index: usize) -> &mut [[u32; TILE_COLUMNS]; TILE_ROWS] {
        assert!(
            self.configured,
            "a tile used before the unit was configured"
        );
        &mut self.tiles[index]
    }

    /// Loads 16 rows of 32 bf16 into tile `index`.
    fn load(&mut self, index: usize, src: &[bf16], stride: usize) {
        check_rows(src.len(), stride, TILE_K);
        let tile = self.tile(index);
        for (r, row) in tile.iter_mut().enumerate() {
            let values = &src[r * stride..][..TILE_K];
            for (word, pair) in row.iter_mut().zip(values.chunks_exact(2)) {
                *word = pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16;
            }
        }
    }
}

impl TileUnit for TileModel {
    fn configure(&mut self) {
        self.configured = true;
        self.tiles = [[[0; TILE_COLUMNS]; TILE_ROWS]; 8];
    }

    fn zero(&mut self, c: Accumulator) {
        *self.tile(c as usize) = [[0; TILE_COLUMNS]; TILE_ROWS];
    }

    fn load_a(&mut self, a: ATile, src: &[bf16], stride: usize) {
        self.load(a as usize, src, stride);
    }

    fn load_b(&mut self, b: BTile, src: &[bf16], stride: usize) {
        self.load(b as usize, src, stride);
    }

    fn dot_bf16(&mut self, c: Accumulator, a: ATile, b: BTile) {
        let (a, b) = (*self.tile(a as usize), *self.tile(b as usize));
        let c = self.tile(c as usize);
        let half = |word: u32, t: usize| (word >> (16 * t)) as u16;
        for (m, c_row) in c.iter_mut().enumerate() {
            for (n, c) in c_row.iter_mut().enumerate() {
                let pairs: [[u16; 4]; TILE_ROWS] = std::array::from_fn(|k| {
                    let (a, b) = (a[m][k], b[k][n]);
                    [half(a, 0), half(b, 0), half(a, 1), half(b, 1)]
                });
                *c = tdpbf16ps(f32::from_bits(*c), &pairs).to_bits();
            }
        }
    }

    fn store(&mut self, c: Accumulator, dst: &mut [f32], stride: usize) {
        check_rows(dst.len(), stride, TILE_COLUMNS);
        let tile = *self.tile(c as usize);
        for (r, row) in tile.iter().enumerate() {
            for (d, word) in dst[r * stride..][..TILE_COLUMNS].iter_mut().zip(row) {
                *d = f32::from_bits(*word);
            }
        }
    }

    fn release(&mut self) {
        self.configured = false;
    }
}

/// A bf16 value as fp32, a denormal as zero (the instruction treats denormal inputs as zero).
fn input(bits: u16) -> f32 {
    let value = f32::from_bits((bits as u32) << 16);
    if value.is_subnormal() { 0.0 } else { value }
}

/// One output element of `TDPBF16PS`: `c` plus the dot product of 16 pairs `[a₀, b₀, a₁, b₁]`
/// (bf16 bits), as this model computes it. Intel's SDM (Vol. 2C, "TDPBF16PS—Dot Product of BF16
/// Tiles Accumulated into Packed Single Precision Tile") writes it as 32 fused adds into `c` in
/// `k` order, round to nearest even, denormal inputs as zero and denormal results flushed. The
/// real instruction does not round that way (`../shared/reference/amx/`, checked in this
/// module's tests): there each pair's two products are summed first (exactly, then rounded to
/// fp32), the pairs summed together, and `c` added last. This model does exactly that, in `k`
/// order; the hardware's order among the pairs is not pinned down, so the two can differ by the
/// roundings of the partial sums (bounded in the tests), and where the hardware keeps products
/// beyond fp32's range (overflow to ±∞ where this model's pair sums give NaN).
pub fn tdpbf16ps(c: f32, pairs: &[[u16; 4]; TILE_ROWS]) -> f32 {
    let pair = |[a0, b0, a1, b1]: [u16; 4]| input(a0) * input(b0) + input(a1) * input(b1);
    let dot = pairs[1..]
        .iter()
        .fold(pair(pairs[0]), |sum, p| sum + pair(*p));
    let c = if c.is_subnormal() { 0.0 } else { c };
    let result = c + dot;
    if result.is_subnormal() { 0.0 } else { result }
}
