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

mod collective;
mod identical;
#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::sync::Arc;

pub use collective::{average_on_host, Collective, Error, Local, Result, BUCKET_FLOATS};
pub use identical::{check_identical, fingerprint, fingerprint_tensors};

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
