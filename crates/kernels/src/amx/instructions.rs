//! The tile unit as Intel AMX's instructions, from stable Rust through `asm!` (the AMX intrinsics
//! are unstable). Tile registers are literal in each template: the GEMM's roles fix them
//! (accumulators `tmm0`–`tmm3`, A tiles `tmm4`–`tmm5`, B tiles `tmm6`–`tmm7`).

use std::arch::asm;
use std::sync::OnceLock;

use half::bf16;

use super::{ATile, Accumulator, BTile, TILE_COLUMNS, TILE_K, TILE_ROWS, TileUnit, check_rows};

/// AMX's instructions on this core. Only [`TileInstructions::new`] makes one, and only where
/// the CPU has AMX-TILE and AMX-BF16 and the OS has granted this process the tile state: that
/// is the safety argument of every `asm!` below (each load and store also checks its rows lie in
/// its slice).
#[derive(Debug)]
pub struct TileInstructions(());

impl TileInstructions {
    /// The instructions, where [`available`] says they run; `None` elsewhere.
    pub fn new() -> Option<Self> {
        available().then_some(Self(()))
    }
}

/// Whether AMX-BF16 runs here: CPUID leaf 7 (AMX-TILE, EDX bit 24; AMX-BF16, EDX bit 22), the
/// OS's XCR0 (bits 17 and 18: XTILECFG and XTILEDATA enabled) and, on Linux, the permission
/// for the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), asked once per
/// process. (`is_x86_feature_detected!` for AMX is unstable.)
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_and_os_enable_amx() && linux_grants_tile_data())
}

fn cpu_and_os_enable_amx() -> bool {
    use std::arch::x86_64::__cpuid_count;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU.
    let (leaf_1, leaf_7) = unsafe { (__cpuid_count(1, 0), __cpuid_count(7, 0)) };
    let amx_tile = leaf_7.edx >> 24 & 1 == 1;
    let amx_bf16 = leaf_7.edx >> 22 & 1 == 1;
    let osxsave = leaf_1.ecx >> 27 & 1 == 1;
    if !(amx_tile && amx_bf16 && osxsave) {
        return false;
    }
    let (low, _high): (u32, u32);
    // SAFETY: XGETBV is available when CPUID reports OSXSAVE (checked above); register 0 is XCR0.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") low, out("edx") _high, options(nomem, nostack))
    };
    low >> 17 & 0b11 == 0b11
}

#[cfg(target_os = "linux")]
fn linux_grants_tile_data() -> bool {
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let status: i64;
    // SAFETY: the arch_prctl system call with two integer arguments; it changes only this
    // process's permitted xsave features. `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL => status,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        )
    };
    status == 0
}

#[cfg(not(target_os = "linux"))]
fn linux_grants_tile_data() -> bool {
    false
}

/// Palette 1 with all eight tiles 16 rows × 64 bytes, in `LDTILECFG`'s 64-byte layout (a
/// `static`, so that the instruction reads one place in memory, aligned).
#[repr(C, align(64))]
struct Palette([u8; 64]);

static PALETTE: Palette = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = 64; // bytes per row (u16, little endian)
        bytes[48 + tile] = TILE_ROWS as u8;
        tile += 1;
    }
    Palette(bytes)
};

impl TileUnit for TileInstructions {
    fn configure(&mut self) {
        // SAFETY: AMX is enabled (see the type); the palette is a valid configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) PALETTE.0.as_ptr(), options(nostack)) };
    }

    fn zero(&mut self, c: Accumulator) {
        // SAFETY: AMX is enabled and configured.
        unsafe {
            match c {
                Accumulator::C00 => asm!("tilezero tmm0", options(nostack)),
                Accumulator::C01 => asm!("tilezero tmm1", options(nostack)),
                Accumulator::C10 => asm!("tilezero tmm2", options(nostack)),
                Accumulator::C11 => asm!("tilezero tmm3", options(nostack)),
            }
        }
    }

    fn load_a(&mut self, a: ATile, src: &[bf16], stride: usize) {
        check_rows(src.len(), stride, TILE_K);
        let (p, s) = (src.as_ptr(), stride * 2);
        // SAFETY: AMX is enabled; the 16 rows of 64 bytes at `s` bytes apart lie in `src`.
        unsafe {
            match a {
                ATile::A0 => {
                    asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) p, s = in(reg) s, options(nostack))
                }
                ATile::A1 => {
                    asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) p, s = in(reg) s, options(nostack))
                }
            }
        }
    }

    fn load_b(&mut self, b: BTile, src: &[bf16], stride: usize) {
        check_rows(src.len(), stride, 2 * TILE_COLUMNS);
        let (p, s) = (src.as_ptr(), stride * 2);
        // SAFETY: as `load_a`.
        unsafe {
            match b {
                BTile::B0 => {
                    asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) p, s = in(reg) s, options(nostack))
                }
                BTile::B1 => {
                    asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) p, s = in(reg) s, options(nostack))
                }
            }
        }
    }

    fn dot_bf16(&mut self, c: Accumulator, a: ATile, b: BTile) {
        // SAFETY: AMX-BF16 is enabled and the tiles configured.
        unsafe {
            match (c, a, b) {
                (Accumulator::C00, ATile::A0, BTile::B0) => {
                    asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nomem, nostack))
                }
                (Accumulator::C00, ATile::A0, BTile::B1) => {
                    asm!("tdpbf16ps tmm0, tmm4, tmm7", options(nomem, nostack))
                }
                (Accumulator::C00, ATile::A1, BTile::B0) => {
                    asm!("tdpbf16ps tmm0, tmm5, tmm6", options(nomem, nostack))
                }
                (Accumulator::C00, ATile::A1, BTile::B1) => {
                    asm!("tdpbf16ps tmm0, tmm5, tmm7", options(nomem, nostack))
                }
                (Accumulator::C01, ATile::A0, BTile::B0) => {
                    asm!("tdpbf16ps tmm1, tmm4, tmm6", options(nomem, nostack))
                }
                (Accumulator::C01, ATile::A0, BTile::B1) => {
                    asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nomem, nostack))
                }
                (Accumulator::C01, ATile::A1, BTile::B0) => {
                    asm!("tdpbf16ps tmm1, tmm5, tmm6", options(nomem, nostack))
                }
                (Accumulator::C01, ATile::A1, BTile::B1) => {
                    asm!("tdpbf16ps tmm1, tmm5, tmm7", options(nomem, nostack))
                }
                (Accumulator::C10, ATile::A0, BTile::B0) => {
                    asm!("tdpbf16ps tmm2, tmm4, tmm6", options(nomem, nostack))
                }
                (Accumulator::C10, ATile::A0, BTile::B1) => {
                    asm!("tdpbf16ps tmm2, tmm4, tmm7", options(nomem, nostack))
                }
                (Accumulator::C10, ATile::A1, BTile::B0) => {
                    asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nomem, nostack))
                }
                (Accumulator::C10, ATile::A1, BTile::B1) => {
                    asm!("tdpbf16ps tmm2, tmm5, tmm7", options(nomem, nostack))
                }
                (Accumulator::C11, ATile::A0, BTile::B0) => {
                    asm!("tdpbf16ps tmm3, tmm4, tmm6", options(nomem, nostack))
                }
                (Accumulator::C11, ATile::A0, BTile::B1) => {
                    asm!("tdpbf16ps tmm3, tmm4, tmm7", options(nomem, nostack))
                }
                (Accumulator::C11, ATile::A1, BTile::B0) => {
                    asm!("tdpbf16ps tmm3, tmm5, tmm6", options(nomem, nostack))
                }
                (Accumulator::C11, ATile::A1, BTile::B1) => {
                    asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nomem, nostack))
                }
            }
        }
    }

    fn store(&mut self, c: Accumulator, dst: &mut [f32], stride: usize) {
        check_rows(dst.len(), stride, TILE_COLUMNS);
        let (p, s) = (dst.as_mut_ptr(), stride * 4);
        // SAFETY: AMX is enabled; the 16 rows of 64 bytes at `s` bytes apart lie in `dst`,
        // which this call borrows mutably.
        unsafe {
            match c {
                Accumulator::C00 => {
                    asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) s, options(nostack))
                }
                Accumulator::C01 => {
                    asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) s, options(nostack))
                }
                Accumulator::C10 => {
                    asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) s, options(nostack))
                }
                Accumulator::C11 => {
                    asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) s, options(nostack))
                }
            }
        }
    }

    fn release(&mut self) {
        // SAFETY: AMX is enabled; releasing returns the tiles to their initial state.
        unsafe { asm!("tilerelease", options(nostack)) };
    }
}
