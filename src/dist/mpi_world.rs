//! The MPI world as a [`Collective`] (the `mpi` feature: rsmpi over the system's MPI library).

use std::thread::ThreadId;

use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::collective::{Collective, Error, Result};

/// `MPI_COMM_WORLD`, used from the thread that initialised MPI.
pub struct Mpi {
    /// Finalises MPI when dropped (at the end of the process).
    _universe: Universe,
    world: SimpleCommunicator,
    thread: ThreadId,
    rank: usize,
    size: usize,
}

// SAFETY: MPI was initialised with MPI_THREAD_FUNNELED and every method checks it is called on
// the initialising thread before touching MPI; other threads may only hold the value (the
// trainer's collaborators are `Send + Sync` as a group).
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI (funneled) and joins the world.
    pub fn init() -> Result<Mpi> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Init("MPI was already initialised".into()))?;
        if threading < Threading::Funneled {
            return Err(Error::Init(format!(
                "the MPI library offers {threading:?} threading, this needs Funneled"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi {
            _universe: universe,
            world,
            thread: std::thread::current().id(),
            rank,
            size,
        })
    }

    fn here(&self) -> Result<()> {
        if std::thread::current().id() == self.thread {
            Ok(())
        } else {
            Err(Error::WrongThread)
        }
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
        self.here()?;
        let send = data.to_vec();
        self.world
            .all_reduce_into(&send[..], data, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        self.here()?;
        let send = data.to_vec();
        self.world
            .all_reduce_into(&send[..], data, SystemOperation::sum());
        Ok(())
    }

    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()> {
        self.here()?;
        self.world.process_at_rank(root as i32).broadcast_into(data);
        Ok(())
    }

    fn broadcast_bytes(&self, data: &mut [u8], root: usize) -> Result<()> {
        self.here()?;
        self.world.process_at_rank(root as i32).broadcast_into(data);
        Ok(())
    }

    fn all_gather(&self, values: &[f64]) -> Result<Vec<f64>> {
        self.here()?;
        let mut all = vec![0.0f64; values.len() * self.size];
        self.world.all_gather_into(values, &mut all[..]);
        Ok(all)
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn name(&self) -> &'static str {
        "mpi"
    }
}
