//! Elementwise and reduction loops compiled for AVX2 when the CPU has it.
//!
//! The crate builds for baseline x86-64 (SSE2, four lanes), so a user's binary runs on any
//! x86-64 CPU; loops the compiler vectorises then use four lanes. [`run`] calls a closure through
//! a copy of itself compiled with AVX2 enabled, where the inlined loop gets eight. Every
//! operation stays the same IEEE operation in the same order (no fused multiply-adds are formed
//! and no reduction is reordered without fast-math), so both copies give identical bits: the
//! choice is invisible in results.

/// Whether this CPU runs the AVX2 copy (checked once; `std` caches the answer).
#[inline]
pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX-512F, for the loops written with its intrinsics.
#[inline]
pub(super) fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f`, compiled with AVX2 enabled when the CPU has it. `f` should hold the whole loop:
/// the closure is inlined into the AVX2 copy, and the functions it calls only if they are
/// `#[inline]`.
#[inline(always)]
pub(super) fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

/// `f`, compiled with AVX2 enabled.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_copies_give_the_same_bits() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let work = || {
            let mut lanes = [0.0f32; 8];
            for c in xs.chunks_exact(8) {
                for l in 0..8 {
                    lanes[l] += c[l] * c[l] + 0.5 * c[l];
                }
            }
            lanes
        };
        assert_eq!(super::run(work), work());
    }
}
