//! Data-parallel training across processes: which rank this process is, and the collectives a
//! training step needs (all-reduce, broadcast, gather).
//!
//! A process learns its place from the launcher: `mpirun -np N stream-train …` (or `srun` on
//! Slurm) starts N processes that meet through MPI ([`from_env`]); a process started on its own
//! is rank 0 of 1 ([`Local`]), whose collectives do nothing. The `mpi` cargo feature brings the
//! MPI implementation (the system's Open MPI or MPICH); without it a launch under `mpirun` with
//! more than one process is refused rather than run as N unrelated trainings.
//!
//! MPI is initialised with `MPI_THREAD_FUNNELED`: collectives are called only from the thread
//! that initialised it (the trainer's), which every implementation here checks.

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::sync::Arc;

/// A collective failed, or the launch cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process was launched by an MPI launcher, but this build has no MPI.
    #[error(
        "launched as one of {world} processes (by {launcher}) but built without the mpi \
         feature: rebuild with --features mpi, or run a single process"
    )]
    NoMpi {
        /// Processes in the launch.
        world: usize,
        /// The environment variable that said so.
        launcher: &'static str,
    },
    /// MPI could not be initialised.
    #[error("MPI initialisation failed: {0}")]
    Init(String),
    /// A collective was called from another thread than the one that initialised MPI.
    #[error("MPI collectives run on the thread that initialised MPI (MPI_THREAD_FUNNELED)")]
    WrongThread,
    /// The ranks disagree where they must not.
    #[error("{0}")]
    Diverged(String),
    /// A device collective (NCCL) failed.
    #[error("NCCL: {0}")]
    Nccl(String),
}

/// Result alias for collectives.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operations data-parallel training needs, across every rank of a job. Every rank must
/// call the same collectives in the same order with the same lengths.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// `data` ← the element-wise sum of every rank's `data`.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] in f64.
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()>;
    /// `data` ← rank `root`'s `data`.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()>;
    /// [`Collective::broadcast`] of bytes.
    fn broadcast_bytes(&self, data: &mut [u8], root: usize) -> Result<()>;
    /// Every rank's `values`, rank after rank (`size × values.len()`).
    fn all_gather(&self, values: &[f64]) -> Result<Vec<f64>>;
    /// Ends every process of the job now, with `code` (the launcher reports it). A rank that
    /// fails must not leave the others waiting in a collective.
    fn abort(&self, code: i32) -> !;
    /// `mpi`, `local`, …
    fn name(&self) -> &'static str;

    /// Averages gradients on their device (NCCL), or `None` to say the host path must do it.
    fn average_on_device(
        &self,
        _grads: &[candle_core::Tensor],
    ) -> Result<Option<Vec<candle_core::Tensor>>> {
        Ok(None)
    }

    /// Whether the gradient averaging runs even with one rank (a one-GPU NCCL job, to test it).
    fn always_reduce(&self) -> bool {
        false
    }

    /// True on rank 0, the one that writes files and prints.
    fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Whether any rank's `flag` is set (every rank gets the same answer).
    fn any(&self, flag: bool) -> Result<bool> {
        let mut v = [flag as u8 as f64];
        self.all_reduce_sum_f64(&mut v)?;
        Ok(v[0] > 0.0)
    }
}

/// A process on its own: rank 0 of 1; every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut [u8], _: usize) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, values: &[f64]) -> Result<Vec<f64>> {
        Ok(values.to_vec())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn name(&self) -> &'static str {
        "local"
    }
}

/// The world size a launcher announced in the environment, and the variable that said so.
fn launched() -> Option<(usize, &'static str)> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS",
    ]
    .into_iter()
    .find_map(|var| {
        let n = std::env::var(var).ok()?.parse::<usize>().ok()?;
        Some((n, var))
    })
}

/// The rank of this process among those on its machine, as the launcher says (which GPU to take).
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "LOCAL_RANK",
    ]
    .into_iter()
    .find_map(|var| std::env::var(var).ok()?.parse().ok())
}

/// This process's place: the MPI world when a launcher started it (and the `mpi` feature is
/// on), else [`Local`]. Call once, first thing, on the thread that will train.
pub fn from_env() -> Result<Arc<dyn Collective>> {
    let Some((world, launcher)) = launched() else {
        return Ok(Arc::new(Local));
    };
    #[cfg(feature = "mpi")]
    {
        let _ = (world, launcher);
        Ok(Arc::new(mpi_world::Mpi::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        if world > 1 {
            return Err(Error::NoMpi { world, launcher });
        }
        Ok(Arc::new(Local))
    }
}

/// xxh3 of a list of f32 tensors' bytes, in order: what ranks compare to prove they hold the same
/// weights.
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
