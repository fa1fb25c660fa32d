//! Seed derivation: every random stream in the project comes from an explicit seed mixed with
//! the coordinates of the thing it randomises (split, epoch, image index…), never from a global RNG.
//!
//! Mixing with SplitMix64 makes neighbouring coordinates give unrelated streams, so the same
//! `(seed, coordinates)` always gives the same draws whatever thread happens to run them.

/// One SplitMix64 step: a bijective, well-avalanched 64-bit mix.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a seed from a base seed and a path of coordinates, e.g. `derive(seed, &[epoch, index])`.
pub fn derive(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix64(seed), |acc, &p| splitmix64(acc ^ splitmix64(p)))
}

/// A `fastrand` generator seeded by [`derive()`].
pub fn rng(seed: u64, parts: &[u64]) -> fastrand::Rng {
    fastrand::Rng::with_seed(derive(seed, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_depends_on_every_part_and_its_order() {
        let a = derive(7, &[1, 2]);
        assert_eq!(a, derive(7, &[1, 2]));
        assert_ne!(a, derive(7, &[2, 1]));
        assert_ne!(a, derive(8, &[1, 2]));
        assert_ne!(a, derive(7, &[1, 2, 0]));
        assert_ne!(derive(0, &[0]), derive(0, &[1]));
    }
}
