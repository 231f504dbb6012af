//! Which SIMD kernels the CPU backend runs: detected at run time, and forcible (for parity
//! tests on every path the machine can run, and to compare speeds) with [`set_level`] or the
//! `QWEN3_CPU_KERNELS` environment variable (`scalar`, `avx2`, `avx512`, `avx512bf16`, `neon`).

use std::sync::atomic::{AtomicU8, Ordering};

/// A kernel family. On x86_64 each level includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Level {
    /// Portable Rust: the reference every SIMD path is tested against.
    Scalar = 1,
    /// AVX2 + FMA (8 F32 lanes).
    Avx2 = 2,
    /// AVX-512 F/BW/VL (16 F32 lanes).
    Avx512 = 3,
    /// AVX-512 with AVX512_BF16 (`vdpbf16ps`) for BF16 GEMV at batch > 1.
    Avx512Bf16 = 4,
    /// AArch64 Advanced SIMD (Kunpeng 920).
    Neon = 5,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Scalar,
        Level::Avx2,
        Level::Avx512,
        Level::Avx512Bf16,
        Level::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512bf16",
            Level::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the level's kernels.
    pub fn supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Bf16 => {
                Level::Avx512.supported() && std::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(target_arch = "aarch64")]
            Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn from_u8(v: u8) -> Option<Level> {
        Level::ALL.into_iter().find(|l| *l as u8 == v)
    }
}

/// The default level: the widest this CPU supports. AVX512_BF16 only changes the batch-1
/// GEMV (see `gemv::BF16_DOT_MAX_ROWS`); every other kernel runs its AVX-512 twin.
pub fn detected() -> Level {
    [Level::Avx512Bf16, Level::Avx512, Level::Avx2, Level::Neon]
        .into_iter()
        .find(|l| l.supported())
        .unwrap_or(Level::Scalar)
}

/// Every level this CPU can run, scalar first.
pub fn supported_levels() -> Vec<Level> {
    Level::ALL.into_iter().filter(|l| l.supported()).collect()
}

/// 0: not decided yet.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level kernels use now: forced by [`set_level`], else `QWEN3_CPU_KERNELS` when it names
/// a supported level, else [`detected`].
pub fn level() -> Level {
    if let Some(l) = Level::from_u8(ACTIVE.load(Ordering::Relaxed)) {
        return l;
    }
    let l = std::env::var("QWEN3_CPU_KERNELS")
        .ok()
        .and_then(|s| Level::parse(&s))
        .filter(|l| l.supported())
        .unwrap_or_else(detected);
    ACTIVE.store(l as u8, Ordering::Relaxed);
    l
}

/// Forces a level process-wide (None: back to the default). Fails if the CPU lacks it.
pub fn set_level(level: Option<Level>) -> Result<(), crate::BackendError> {
    match level {
        Some(l) if !l.supported() => Err(crate::BackendError::Unsupported(format!(
            "CPU kernel level {} on this CPU",
            l.name()
        ))),
        Some(l) => {
            ACTIVE.store(l as u8, Ordering::Relaxed);
            Ok(())
        }
        None => {
            ACTIVE.store(0, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// Asks the CPU to start loading `data`'s cache lines: a hint that never faults, and nothing
/// where the architecture has no stable prefetch instruction.
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    let p = data.as_ptr() as *const u8;
    let mut off = 0;
    while off < std::mem::size_of_val(data) {
        prefetch_line(p.wrapping_add(off));
        off += 64;
    }
}

#[inline(always)]
fn prefetch_line(p: *const u8) {
    // SAFETY (each arm): a prefetch reads nothing architecturally and never faults, whatever
    // the address; SSE is part of every x86_64 CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    };
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!(
            "prfm pldl1keep, [{0}]",
            in(reg) p,
            options(nostack, readonly, preserves_flags)
        )
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_scalar_is_always_there() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
        assert_eq!(Level::parse("sse9"), None);
        assert_eq!(supported_levels()[0], Level::Scalar);
        assert!(detected().supported());
    }
}
