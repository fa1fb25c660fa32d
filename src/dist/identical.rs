//! Proof that the ranks agree: a fingerprint of their tensors compared across the job.

use candle_core::Tensor;

use super::collective::{flatten, Collective, Error, Result};

/// xxh3 of `tensors`' values as f32, in order (read back from their device at once): what ranks
/// compare to prove they hold the same weights.
pub fn fingerprint_tensors(tensors: &[Tensor]) -> Result<u64> {
    let host = flatten(tensors)?;
    Ok(fingerprint([&host[..]]))
}

/// xxh3 of a list of f32 slices' bytes, in order.
pub fn fingerprint<'a>(chunks: impl IntoIterator<Item = &'a [f32]>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for c in chunks {
        for v in c {
            h.update(&v.to_bits().to_le_bytes());
        }
    }
    h.digest()
}

/// Fails unless every rank's `fingerprint` equals rank 0's (every rank gets the same verdict).
pub fn check_identical(world: &dyn Collective, fingerprint: u64, what: &str) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    // Two halves of the hash, exactly representable in f64.
    let halves = [
        (fingerprint >> 32) as f64,
        (fingerprint & 0xffff_ffff) as f64,
    ];
    let all = world.all_gather(&halves)?;
    let differing: Vec<usize> = all
        .chunks(2)
        .enumerate()
        .filter(|(_, h)| h[0] != all[0] || h[1] != all[1])
        .map(|(r, _)| r)
        .collect();
    if differing.is_empty() {
        Ok(())
    } else {
        Err(Error::Diverged(format!(
            "{what}: rank(s) {differing:?} differ from rank 0 (the ranks must stay identical)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Local;

    #[test]
    fn a_lone_process_is_rank_0_of_1_and_its_collectives_keep_the_data() {
        let l = Local;
        let mut v = [1.0f32, 2.0];
        l.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        assert!(l.is_main() && l.size() == 1);
        assert!(l.any(true).unwrap() && !l.any(false).unwrap());
        assert_eq!(l.all_gather(&[3.0]).unwrap(), vec![3.0]);
        check_identical(&l, 42, "weights").unwrap();
        assert_ne!(
            fingerprint([&[1.0f32][..]]),
            fingerprint([&[1.0f32 + f32::EPSILON][..]])
        );
    }
}
