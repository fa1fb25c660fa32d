//! The ops' CPU maths on plain f32 slices (no candle types): one file or folder per op, named
//! as the op's glue file at the top of `ops/` is, and what they share: `gemm.rs` (a
//! single-threaded matrix product), `wide.rs` (loops compiled for AVX2 when the CPU has it), and
//! here an op's output written without zeroing it first (`written_by`) and a gradient summed
//! over the batch in fixed chunks (`images_per_chunk`, `sum_in_order`) so that it is the same
//! on every run with the same thread count.

pub(crate) mod batch_norm;
pub mod conv;
pub(crate) mod gelu;
mod gemm;
pub(crate) mod max_pool;
pub(crate) mod optim;
pub(crate) mod tail;
mod wide;

use std::mem::MaybeUninit;

/// `len` values, every one written by `fill` into memory that was not zeroed first.
///
/// Zeroing an output the op then overwrites is a serial memset while the other threads wait:
/// on the fast-cpu step with the whitening bias frozen it cost about an eighth of the time
/// (1175–1198 → 1355–1368 images/s without it, alternated, on a 2-core Sapphire Rapids-class
/// Xeon). In debug builds (the tests) the memory starts as NaN, so an element `fill` misses
/// shows in any comparison with a reference.
///
/// # Safety
/// `fill` must write every one of the `len` elements.
pub(crate) unsafe fn written_by(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if cfg!(debug_assertions) {
        for v in spare.iter_mut() {
            v.write(f32::NAN);
        }
    }
    fill(spare);
    // SAFETY: the caller's contract: `fill` wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// The values of `s`, once every one of them is written.
///
/// # Safety
/// Every element of `s` is initialised.
pub(crate) unsafe fn assume_written(s: &[MaybeUninit<f32>]) -> &[f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller vouches for the values.
    unsafe { &*(s as *const [MaybeUninit<f32>] as *const [f32]) }
}

/// Images per chunk when a gradient is summed over the batch: a fixed number of contiguous
/// chunks from the thread count, not from scheduling, so with the partial sums added in chunk
/// order ([`sum_in_order`]) the result is the same for a given thread count.
pub(crate) fn images_per_chunk(n: usize) -> usize {
    let chunks = (rayon::current_num_threads() * 2).clamp(1, n.max(1));
    n.div_ceil(chunks).max(1)
}

/// The chunks' partial sums added in chunk order, into `len` values.
pub(crate) fn sum_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for p in partials {
        for (a, b) in total.iter_mut().zip(p) {
            *a += *b;
        }
    }
    total
}
