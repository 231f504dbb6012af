//! The BF16 policy's matmul on AMX tiles (`tdpbf16ps`), for prefill-sized batches where the
//! CPU has AMX-BF16 (Sapphire Rapids and later): `out[m, n] = bf16(x)[m, k] · w[n, k]ᵀ`, F32
//! accumulation, the same contract as [`super::gemm_bf16`].
//!
//! One `tdpbf16ps` does a 16 × 16 × 32 product (16,384 multiply-adds), 256 times the work of a
//! `vdpbf16ps`. The weights are the tiles' A operand straight from their rows as loaded (16
//! rows, 64 bytes of each, `k · 2` bytes apart): no repacking, the mmap'd rows read as they are.
//! `x`, rounded to BF16 once per call, is the B operand, packed in the pair-interleaved layout
//! tiles want (`[m/16][k/2][16][2]`). So each tile of results is `outᵀ`, 16 weight rows ×
//! 16 rows of `x`, scattered into `out` once per block.
//!
//! Blocking: a task owns [`PANEL_ROWS`] weight rows (≤ 384 KiB at k = 3,072: it stays in L2)
//! and walks `x` in blocks of 32 rows; a block is 2 × 2 result tiles (weight rows × `x` rows)
//! over all of k, four `tdpbf16ps` per four tile loads. Tiles need whole 32-wide k steps and
//! 32-row weight pairs, so [`fits`] says which shapes run here (every Qwen3 projection does).

// Elsewhere nothing runs on tiles: `gemm_amx` always declines.
#![cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    allow(dead_code, unused_imports)
)]

use std::cell::RefCell;

use half::bf16;

thread_local! {
    /// `x` rounded to BF16 and pair-interleaved, kept per thread.
    static XV: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Weight rows per task: two 32-row tile pairs.
const PANEL_ROWS: usize = 64;
/// The fewest rows of `x` worth a tile (a tile is 16 wide; below that the `vdpbf16ps` GEMM wins).
pub const MIN_ROWS: usize = 16;

/// Whether the shape runs on tiles: whole 32-value k steps, whole 32-row weight pairs, and at
/// least [`MIN_ROWS`] rows of `x`.
pub fn fits(m: usize, k: usize, n: usize) -> bool {
    m >= MIN_ROWS && k > 0 && k.is_multiple_of(32) && n > 0 && n.is_multiple_of(32)
}

/// Whether AMX-BF16 can run here: the CPU has it, the kernel let this process use the tile
/// data (Linux asks each process to request it), and `QWEN3_CPU_AMX` is not `0` (to compare
/// against the `vdpbf16ps` GEMM).
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *READY.get_or_init(|| {
            std::env::var("QWEN3_CPU_AMX").map_or(true, |v| v.trim() != "0") && amx::request()
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// `out[m, n] = bf16(x)[m, k] · w[n, k]ᵀ` on tiles. The caller checks [`available`] and
/// [`fits`]; otherwise this returns `false` and leaves `out` alone.
pub fn gemm_amx(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) -> bool {
    assert!(
        x.len() == m * k && w.len() == n * k && out.len() == m * n,
        "gemm_amx: sizes"
    );
    if !available() || !fits(m, k, n) {
        return false;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use rayon::prelude::*;

        let mp = m.div_ceil(32) * 32;
        super::with_scratch(&XV, |xv| {
            pack_x(x, m, k, mp, xv);
            let xv: &[u16] = xv;
            let dst = super::gemv::OutPtr(out.as_mut_ptr());
            (0..n.div_ceil(PANEL_ROWS)).into_par_iter().for_each(|p| {
                let (r0, r1) = (p * PANEL_ROWS, ((p + 1) * PANEL_ROWS).min(n));
                // SAFETY: AMX is usable (`available`); `xv` is `[mp/16][k/2][16][2]`, `w`
                // `[n, k]` with k and r1 - r0 multiples of 32 (`fits`); this task writes only
                // columns r0..r1 of the `[m, n]` output.
                unsafe { amx::panel(xv, m, mp, k, w, r0, r1, n, dst.get()) }
            });
        });
        true
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    unreachable!("AMX is never available here")
}

/// `x` rounded to BF16 (nearest even) into the B-operand layout: `xv[((b·k/2 + p)·16 + j)·2 + t]
/// = x[16b + j, 2p + t]`, rows past m zero, so each 16-row block's k-step is one 1 KiB tile.
fn pack_x(x: &[f32], m: usize, k: usize, mp: usize, xv: &mut Vec<u16>) {
    xv.clear();
    xv.resize(mp * k, 0);
    let half = k / 2;
    for (i, row) in x.chunks_exact(k).enumerate().take(m) {
        let (b, j) = (i / 16, i % 16);
        let base = b * half * 32 + j * 2;
        for (p, pair) in row.chunks_exact(2).enumerate() {
            let d = base + p * 32;
            xv[d] = bf16::from_f32(pair[0]).to_bits();
            xv[d + 1] = bf16::from_f32(pair[1]).to_bits();
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use half::bf16;
    use std::arch::asm;

    /// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`, Documentation/arch/x86/xstate.rst), after CPUID says the CPU has
    /// AMX-TILE and AMX-BF16 (leaf 7 EDX bits 24 and 22).
    pub fn request() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // Leaf 7 is read only where the CPU has it.
        let has = __cpuid(0).eax >= 7 && {
            let edx = __cpuid_count(7, 0).edx;
            edx & (1 << 24) != 0 && edx & (1 << 22) != 0
        };
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it only changes which xstate
        // features this process may use.
        has && unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// `ldtilecfg`'s 64-byte operand: palette 1, every tile 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        _reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        _reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Weight rows `r0..r1` against every row of `x`, into columns `r0..r1` of `out`.
    ///
    /// # Safety
    /// AMX usable by this process; `xv` holds `mp · k` values packed by `pack_x` (mp a
    /// multiple of 32 ≥ m); `w` holds `n · k` with k a multiple of 32 and r1 - r0 a multiple of
    /// 32; `out` holds `m · n` and no other thread writes columns `r0..r1`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel(
        xv: &[u16],
        m: usize,
        mp: usize,
        k: usize,
        w: &[bf16],
        r0: usize,
        r1: usize,
        n: usize,
        out: *mut f32,
    ) {
        debug_assert!(xv.len() >= mp * k && (r1 - r0).is_multiple_of(32) && k.is_multiple_of(32));
        // Four 16 × 16 result tiles: [weight half][x half][16 weight rows][16 x rows].
        let mut c = [[[[0f32; 16]; 16]; 2]; 2];
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        let steps = k / 32;
        let wp = w.as_ptr() as *const u16;
        let mut i0 = 0;
        while i0 < m {
            let b0 = xv.as_ptr().add(i0 * k);
            let b1 = b0.add(16 * k);
            let mut j0 = r0;
            while j0 < r1 {
                block(wp.add(j0 * k), k * 2, b0, b1, steps, &mut c);
                for (h, c) in c.iter().enumerate() {
                    for (xh, c) in c.iter().enumerate() {
                        let rows = (m - (i0 + 16 * xh).min(m)).min(16);
                        for a in 0..rows {
                            let o = out.add((i0 + 16 * xh + a) * n + j0 + 16 * h);
                            for (r, c) in c.iter().enumerate() {
                                *o.add(r) = c[a];
                            }
                        }
                    }
                }
                j0 += 32;
            }
            i0 += 32;
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// 32 weight rows (`a`, rows `stride` bytes apart) × 32 rows of packed `x` (`b0`, `b1`)
    /// over `steps` k-steps of 32, into `c` (`c[h][xh][r][a]` = weight row 16h + r · x row
    /// 16xh + a).
    ///
    /// # Safety
    /// Tiles configured by [`CONFIG`]; `a` readable for 32 rows of `steps · 32` values, `b0`
    /// and `b1` for `steps` tiles of 512 values each.
    #[inline(always)]
    unsafe fn block(
        a: *const u16,
        stride: usize,
        b0: *const u16,
        b1: *const u16,
        steps: usize,
        c: &mut [[[[f32; 16]; 16]; 2]; 2],
    ) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}]",
            "tileloadd tmm5, [{a1} + {sa}]",
            "tileloadd tmm6, [{b0} + {sb}]",
            "tileloadd tmm7, [{b1} + {sb}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {sb}], tmm0",
            "tilestored [{c} + {sb} + 1024], tmm1",
            "tilestored [{c} + {sb} + 2048], tmm2",
            "tilestored [{c} + {sb} + 3072], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.byte_add(16 * stride) => _,
            sa = in(reg) stride,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            sb = in(reg) 64usize,
            n = inout(reg) steps => _,
            c = in(reg) c.as_mut_ptr(),
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::gemm_bf16::twin_check;

    #[test]
    fn tiles_match_scalar_twin_on_odd_sizes() {
        if !available() {
            eprintln!("no AMX-BF16 here: the tile GEMM is not run");
            return;
        }
        // m not a multiple of 16 or 32 (padded blocks), panels cut short (n = 96, 160), one
        // and several k-steps, rows 4 KiB apart (k = 2,048).
        for &(m, k, n) in &[
            (16, 32, 32),
            (17, 64, 96),
            (33, 96, 160),
            (50, 1024, 64),
            (64, 2048, 32),
            (129, 160, 224),
        ] {
            assert!(fits(m, k, n));
            twin_check::check("amx", (m, k, n), |x, w, out| {
                assert!(gemm_amx(x, m, k, w, n, out))
            });
        }
    }

    #[test]
    fn shapes_off_the_tiles_are_refused() {
        let (x, w) = (vec![1.0; 15 * 32], vec![bf16::ONE; 32 * 32]);
        let mut out = vec![7.0; 15 * 32];
        assert!(!fits(15, 32, 32) && !fits(16, 40, 32) && !fits(16, 32, 48));
        assert!(!gemm_amx(&x, 15, 32, &w, 32, &mut out));
        assert!(out.iter().all(|&v| v == 7.0));
    }
}
