//! A training process's place in a data-parallel job: joining the ranks (MPI when `mpirun` or
//! `srun` started it), the GPU each rank takes, NCCL on top, and ending the whole job when one
//! rank fails.

use std::sync::Arc;

use anyhow::Result;

use cifar_stream::dist::{self, Collective};

use crate::args::DeviceFlag;

/// The ranks this process belongs to (rank 0 of 1 when started on its own).
pub fn join() -> Result<Arc<dyn Collective>> {
    let world = dist::from_env()?;
    if world.size() > 1 {
        // One write, so that the ranks' lines do not interleave on a shared stderr.
        let line = format!(
            "rank {} of {} ({}), pid {}\n",
            world.rank(),
            world.size(),
            world.name(),
            std::process::id()
        );
        eprint!("{line}");
    }
    Ok(world)
}

/// The device of this rank: `--device` as given, except that a plain `cuda` in a job of several
/// ranks means the GPU of the rank's local index (one GPU per process, as torchrun assigns).
pub fn device(flag: &DeviceFlag, world: &dyn Collective) -> Result<candle_core::Device> {
    let choice = match (flag.device.as_deref(), world.size() > 1) {
        (Some("cuda") | None, true) if candle_core::utils::cuda_is_available() => {
            Some(format!("cuda:{}", dist::local_rank().unwrap_or(0)))
        }
        (choice, _) => choice.map(str::to_string),
    };
    Ok(cifar_stream::device::select(choice.as_deref())?)
}

/// NCCL for the gradients when asked (`--nccl`): the world's ranks joined into a communicator on
/// `device`.
pub fn with_nccl(
    world: Arc<dyn Collective>,
    device: &candle_core::Device,
    nccl: bool,
) -> Result<Arc<dyn Collective>> {
    if !nccl {
        return Ok(world);
    }
    #[cfg(feature = "nccl")]
    {
        Ok(Arc::new(dist::nccl::Nccl::new(world, device)?))
    }
    #[cfg(not(feature = "nccl"))]
    {
        let _ = (world, device);
        anyhow::bail!("--nccl needs a build with the nccl feature (cargo build --features nccl)")
    }
}

/// Runs `f`; when it fails in a job of several ranks, prints the error and ends every rank now
/// (MPI_Abort), so that no rank waits for ever in a collective the failed one will not join.
pub fn or_abort<T>(world: &dyn Collective, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match f() {
        Err(e) if world.size() > 1 => {
            let line = format!("error (rank {} of {}): {e:#}\n", world.rank(), world.size());
            eprint!("{line}");
            world.abort(1)
        }
        other => other,
    }
}
